/* The device program: for each int8 image in input.bin, run the generated model and the
   entropy encoder, and append to output.bin what the host checks:
     local logits int8[AGILENN_NUM_CLASSES] | remote features int8[H * W * REMOTE_C] (contiguous)
     | frame length u32 | frame bytes | ticks u32[AGILENN_NUM_LAYERS + 1] (layers, then encoder)
     | stack bytes u32 (deepest stack use of invoke + encode).
   On the Cortex-M7 (QEMU, -icount shift=0) a tick is one SysTick count; the host has none (0).
   I/O is plain stdio: semihosting files under QEMU, ordinary files on the host. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "agilenn_encoder.h"
#include "agilenn_model.h"

#ifndef AGILENN_FRAME_STATIC_BYTES
#define AGILENN_FRAME_STATIC_BYTES 0 /* 0: the frame goes to the arena's free space */
#endif

#if defined(__arm__)
#define SYST_CSR (*(volatile uint32_t *)0xE000E010)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018)
static volatile uint32_t systick_wraps;
void SysTick_Handler(void) { ++systick_wraps; }
static void ticks_start(void) {
  SYST_RVR = 0xFFFFFFu;
  SYST_CVR = 0;
  SYST_CSR = 7; /* processor clock, interrupt on wrap, enable */
  while (SYST_CVR == 0) {
  }
  systick_wraps = 0;
}
static uint64_t ticks(void) {
  uint32_t w, v1, v2;
  do {
    v1 = SYST_CVR;
    w = systick_wraps;
    v2 = SYST_CVR;
  } while (v2 > v1 || w != systick_wraps); /* reloaded in between: read again */
  return (uint64_t)w * 0x1000000u + (0xFFFFFFu - v2);
}
#define STACK_PAINT_BYTES 16384u
static uintptr_t stack_painted_from;
/* Paint the stack below main's frame, inline (a called function would paint its own frame). */
static inline __attribute__((always_inline)) void stack_paint(void) {
  uintptr_t sp;
  __asm volatile("mov %0, sp" : "=r"(sp));
  stack_painted_from = sp;
  for (volatile uint8_t *p = (uint8_t *)sp - STACK_PAINT_BYTES; p < (uint8_t *)sp; ++p) *p = 0xA5;
}
static uint32_t stack_used(void) { /* bytes below main's frame touched since the paint */
  const volatile uint8_t *low = (const uint8_t *)stack_painted_from - STACK_PAINT_BYTES;
  uint32_t i = 0;
  while (i < STACK_PAINT_BYTES && low[i] == 0xA5) ++i;
  return STACK_PAINT_BYTES - i;
}
#else
static void ticks_start(void) {}
static uint64_t ticks(void) { return 0; }
static void stack_paint(void) {}
static uint32_t stack_used(void) { return 0; }
#endif

static uint64_t layer_ticks[AGILENN_NUM_LAYERS];
static uint64_t last_tick;
static void on_layer(void *ctx, int layer) {
  (void)ctx;
  uint64_t now = ticks();
  layer_ticks[layer] = now - last_tick;
  last_tick = now;
}

#if AGILENN_FRAME_STATIC_BYTES > 0
static uint8_t frame_static[AGILENN_FRAME_STATIC_BYTES];
#endif

static int write_u32(FILE *f, uint32_t v) {
  uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
  return fwrite(b, 1, 4, f) == 4 ? 0 : -1;
}

int main(void) {
  enum { IMAGE = AGILENN_INPUT_H * AGILENN_INPUT_W * AGILENN_INPUT_C };
  static int8_t remote[AGILENN_FEATURES_H * AGILENN_FEATURES_W * AGILENN_REMOTE_C];
  FILE *in = fopen("input.bin", "rb");
  FILE *out = fopen("output.bin", "wb");
  if (!in || !out) {
    printf("agilenn: cannot open input.bin / output.bin\n");
    return 2;
  }
  ticks_start();
  long n = 0;
  for (;; ++n) {
    int8_t *image = agilenn_input();
    if (fread(image, 1, IMAGE, in) != IMAGE) break;
    uint8_t *frame;
    size_t capacity;
#if AGILENN_FRAME_STATIC_BYTES > 0
    frame = frame_static;
    capacity = sizeof(frame_static);
#endif
    stack_paint();
    last_tick = ticks();
    if (agilenn_invoke(on_layer, 0) != 0) {
      printf("agilenn: invoke failed on sample %ld\n", n);
      return 3;
    }
    const int8_t *features = agilenn_remote_features();
#if AGILENN_FRAME_STATIC_BYTES == 0
    frame = agilenn_scratch(&capacity);
#endif
    uint64_t t0 = ticks();
    size_t len = agilenn_encode_frame(features, AGILENN_FEATURES_C, frame, capacity);
    uint64_t encode_ticks = ticks() - t0;
    uint32_t stack = stack_used();
    if (len == 0) {
      printf("agilenn: frame buffer of %lu bytes is too small\n", (unsigned long)capacity);
      return 4;
    }
    for (int p = 0; p < AGILENN_FEATURES_H * AGILENN_FEATURES_W; ++p)
      memcpy(remote + p * AGILENN_REMOTE_C, features + p * AGILENN_FEATURES_C, AGILENN_REMOTE_C);
    int bad = fwrite(agilenn_local_logits(), 1, AGILENN_NUM_CLASSES, out) != AGILENN_NUM_CLASSES;
    bad |= fwrite(remote, 1, sizeof(remote), out) != sizeof(remote);
    bad |= write_u32(out, (uint32_t)len) || fwrite(frame, 1, len, out) != len;
    for (int i = 0; i < AGILENN_NUM_LAYERS; ++i) bad |= write_u32(out, (uint32_t)layer_ticks[i]);
    bad |= write_u32(out, (uint32_t)encode_ticks) || write_u32(out, stack);
    if (bad) {
      printf("agilenn: cannot write output.bin\n");
      return 5;
    }
  }
  fclose(in);
  fclose(out);
  printf("agilenn: %ld samples\n", n);
  return 0;
}
