// LD_PRELOAD library: on an AVX-512 CPU, the process sees an AVX2 CPU without AVX-512.
//
// Every library here picks its kernels at run time from the CPUID instruction (XLA's code
// generator through LLVM, XNNPACK/YNNPACK's matmuls, oneDNN in TensorFlow, NumPy). Linux's
// CPUID faulting (arch_prctl ARCH_SET_CPUID, flag `cpuid_fault` in /proc/cpuinfo) turns each
// CPUID into a SIGSEGV; the handler below runs the real instruction, clears the AVX-512 bits
// and on AMD family 25 reports model 0x21 (Zen 3, which has no AVX-512) instead of Zen 4's,
// so the same binaries take the code paths they take on an AVX2 machine, at native speed.
// The faulting setting is inherited by threads and forks and reset by exec, where LD_PRELOAD
// installs it again. The program's own SIGSEGV handlers (Python's faulthandler, Abseil) are
// kept and called for every other fault.
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
typedef sighandler_t (*signal_fn)(int, sighandler_t);

static sigaction_fn real_sigaction;
static signal_fn real_signal;
static struct sigaction program_handler;  // what the program asked for SIGSEGV

// ARCH_SET_CPUID's argument says whether CPUID may run: 0 makes it fault.
static void set_cpuid_faulting(int on) {
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1);
}

static void masked_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t r[4]) {
  set_cpuid_faulting(0);
  __asm__ volatile("cpuid"
                   : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3])
                   : "a"(leaf), "c"(subleaf));
  set_cpuid_faulting(1);
  if (leaf == 1) {
    uint32_t family = ((r[0] >> 8) & 0xF) + ((r[0] >> 20) & 0xFF);
    // On AMD family 25 (Zen 3 and Zen 4): model 0x21, a Zen 3, so that LLVM names the CPU
    // znver3. On other CPUs only the feature bits change.
    if (family == 25) r[0] = (r[0] & ~0x000F00F0u) | 0x00020010u;
  } else if (leaf == 7 && subleaf == 0) {
    // EBX: AVX512F 16, DQ 17, IFMA 21, PF 26, ER 27, CD 28, BW 30, VL 31.
    r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) |
              (1u << 30) | (1u << 31));
    // ECX: VBMI 1, VBMI2 6, VNNI 11, BITALG 12, VPOPCNTDQ 14.
    r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
    // EDX: 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, FP16 23.
    r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 23));
  } else if (leaf == 7 && subleaf == 1) {
    r[0] &= ~(1u << 5);  // AVX512_BF16
  } else if (leaf == 0xD && subleaf == 0) {
    r[0] &= ~(0x7u << 5);  // the opmask / ZMM register state XSAVE can hold
  }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
  ucontext_t *uc = (ucontext_t *)context;
  greg_t *regs = uc->uc_mcontext.gregs;
  const unsigned char *ip = (const unsigned char *)regs[REG_RIP];
  if (info->si_code == SI_KERNEL && ip[0] == 0x0F && ip[1] == 0xA2) {
    uint32_t r[4];
    masked_cpuid((uint32_t)regs[REG_RAX], (uint32_t)regs[REG_RCX], r);
    regs[REG_RAX] = r[0];
    regs[REG_RBX] = r[1];
    regs[REG_RCX] = r[2];
    regs[REG_RDX] = r[3];
    regs[REG_RIP] += 2;
    return;
  }
  // Any other fault: the program's handler, or the default action (the instruction faults
  // again once this returns).
  if (program_handler.sa_flags & SA_SIGINFO) {
    program_handler.sa_sigaction(sig, info, context);
  } else if (program_handler.sa_handler != SIG_DFL && program_handler.sa_handler != SIG_IGN) {
    program_handler.sa_handler(sig);
  } else {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction(SIGSEGV, &dfl, NULL);
  }
}

static void find_real_functions(void) {
  if (real_sigaction == NULL) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
  if (real_signal == NULL) real_signal = (signal_fn)dlsym(RTLD_NEXT, "signal");
}

// The program may install its own SIGSEGV handler; it is recorded and chained, not installed.
int sigaction(int signum, const struct sigaction *act, struct sigaction *oldact) {
  find_real_functions();
  if (signum != SIGSEGV) return real_sigaction(signum, act, oldact);
  if (oldact != NULL) *oldact = program_handler;
  if (act != NULL) program_handler = *act;
  return 0;
}

sighandler_t signal(int signum, sighandler_t handler) {
  find_real_functions();
  if (signum != SIGSEGV) return real_signal(signum, handler);
  struct sigaction act, old;
  memset(&act, 0, sizeof act);
  act.sa_handler = handler;
  act.sa_flags = SA_RESTART;
  sigemptyset(&act.sa_mask);
  if (sigaction(signum, &act, &old) != 0) return SIG_ERR;
  return old.sa_handler;
}

__attribute__((constructor)) static void install(void) {
  find_real_functions();
  struct sigaction act, before;
  memset(&act, 0, sizeof act);
  act.sa_sigaction = on_segv;
  // NODEFER: a CPUID inside the program's own SIGSEGV handler still works. ONSTACK: a stack
  // overflow still reaches the program's handler on its alternate stack, if it set one.
  act.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
  sigemptyset(&act.sa_mask);
  if (real_sigaction(SIGSEGV, &act, &before) != 0 ||
      syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
    fprintf(stderr, "hide_avx512: this CPU or kernel has no CPUID faulting "
                    "(no cpuid_fault in /proc/cpuinfo); cannot hide AVX-512\n");
    _exit(2);
  }
  // A handler set before this library loaded (none, normally) stays the program's.
  if (before.sa_handler != SIG_DFL && before.sa_sigaction != on_segv) program_handler = before;
}
