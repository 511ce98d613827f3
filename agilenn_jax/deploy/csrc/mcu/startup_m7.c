/* Minimal Cortex-M7 start-up for QEMU's mps2-an500: vector table, .data/.bss init, FPU on,
   newlib's semihosting I/O, then main(); its return value becomes QEMU's exit status. */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t __etext, __data_start__, __data_end__, __bss_start__, __bss_end__, __stack_top__;
extern int main(void);
extern void initialise_monitor_handles(void);
void SysTick_Handler(void);

static void Default_Handler(void) {
  for (;;) {
  }
}

void Reset_Handler(void) {
  uint32_t *src = &__etext, *dst = &__data_start__;
  while (dst < &__data_end__) *dst++ = *src++;
  for (dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
  *(volatile uint32_t *)0xE000ED88 |= (0xFu << 20); /* CPACR: full access to CP10/CP11 (FPU) */
  __asm volatile("dsb\n isb");
  initialise_monitor_handles();
  exit(main());
}

__attribute__((section(".vectors"), used)) void (*const agilenn_vectors[16])(void) = {
    (void (*)(void))(uintptr_t)&__stack_top__, Reset_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, 0, 0, 0, 0, Default_Handler,
    Default_Handler, 0, Default_Handler, SysTick_Handler,
};
