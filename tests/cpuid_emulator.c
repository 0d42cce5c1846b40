/* Another CPU model, as the libraries of one process see it: preloaded (LD_PRELOAD), this makes
 * CPUID fault (Linux's ARCH_SET_CPUID; Intel CPUs since Ivy Bridge and KVM guests) and answers
 * it from a SIGSEGV handler, so TensorFlow, oneDNN, Eigen, NumPy and OpenBLAS see the CPU that
 * EMULATED_CPU names instead of this one. Instruction sets can only be taken away (the process
 * still runs on this CPU), cache sizes and the model set freely:
 *   haswell      an AVX2-only CPU: no AVX-512, VNNI, BF16 or AMX; family 6 model 63;
 *                32 KiB L1 data cache, 256 KiB L2, 20 MiB L3
 *   other_caches this CPU's instruction sets, with 32 KiB L1 data, 2 MiB L2 and 105 MiB L3
 * A SIGSEGV handler the program installs later (Python's faulthandler) stays behind this one and
 * still reports real faults. Used by tests/test_cpu_kernels.py, built there with `gcc -shared`;
 * the whole pipeline runs under it too (docs/model.md). */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static int haswell;
static struct sigaction chained;  /* the SIGSEGV handler the program asked for */
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);
static unsigned l2_kib, l3_kib;

static void hardware_cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
}

/* Leaf 4: one cache (type 1 data, 2 instructions, 3 unified), 64-byte lines, 1 partition. */
static void cache(unsigned r[4], unsigned type, unsigned level, unsigned kib, unsigned ways) {
    r[0] = type | (level << 5) | (1u << 8);
    r[1] = ((ways - 1) << 22) | 63u;
    r[2] = kib * 1024u / (ways * 64u) - 1;
    r[3] = 0;
}

static void emulated(unsigned leaf, unsigned sub, unsigned r[4]) {
    hardware_cpuid(leaf, sub, r);
    switch (leaf) {
    case 1:
        if (haswell) {
            r[0] = 0x000306F2u;  /* family 6, model 63 */
            r[2] &= 0x7ED8320Bu | (1u << 31);  /* Haswell's SSE3..RDRAND, and the hypervisor bit */
        }
        break;
    case 2:
        r[0] = 0xFF01u; r[1] = r[2] = r[3] = 0;  /* descriptor 0xFF: "see leaf 4" */
        break;
    case 4:
        switch (sub) {
        case 0: cache(r, 1, 1, 32, 8); break;
        case 1: cache(r, 2, 1, 32, 8); break;
        case 2: cache(r, 3, 2, l2_kib, 16); break;
        case 3: cache(r, 3, 3, l3_kib, 20); break;
        default: r[0] = r[1] = r[2] = r[3] = 0;
        }
        break;
    case 7:
        if (haswell) {
            if (sub == 0) {  /* FSGSBASE BMI1 AVX2 SMEP BMI2 ERMS INVPCID; no subleaf 1 */
                r[0] = 0;
                r[1] &= (1u << 0) | (1u << 3) | (1u << 5) | (1u << 7) | (1u << 8) | (1u << 9) | (1u << 10);
                r[2] = r[3] = 0;
            } else {
                r[0] = r[1] = r[2] = r[3] = 0;
            }
        }
        break;
    case 0x80000006:
        r[2] = (l2_kib << 16) | (6u << 12) | 64u;
        break;
    }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    const uint8_t *ip = (const uint8_t *)uc->uc_mcontext.gregs[REG_RIP];
    if (ip[0] == 0x0F && ip[1] == 0xA2) {  /* CPUID */
        unsigned r[4];
        emulated((unsigned)uc->uc_mcontext.gregs[REG_RAX], (unsigned)uc->uc_mcontext.gregs[REG_RCX], r);
        uc->uc_mcontext.gregs[REG_RAX] = r[0];
        uc->uc_mcontext.gregs[REG_RBX] = r[1];
        uc->uc_mcontext.gregs[REG_RCX] = r[2];
        uc->uc_mcontext.gregs[REG_RDX] = r[3];
        uc->uc_mcontext.gregs[REG_RIP] += 2;
        return;
    }
    /* A real fault: the program's own handler reports it (Python's faulthandler), then the
       default handler ends the process when the instruction runs again. */
    static volatile sig_atomic_t reported;
    if (!reported) {
        reported = 1;
        if ((chained.sa_flags & SA_SIGINFO) && chained.sa_sigaction) {
            chained.sa_sigaction(sig, info, context);
        } else if (!(chained.sa_flags & SA_SIGINFO) && chained.sa_handler != SIG_DFL &&
                   chained.sa_handler != SIG_IGN) {
            chained.sa_handler(sig);
        }
    }
    struct sigaction fallback;
    memset(&fallback, 0, sizeof fallback);
    fallback.sa_handler = SIG_DFL;
    real_sigaction(SIGSEGV, &fallback, NULL);
}

/* Handlers the program installs for SIGSEGV (Python's faulthandler, in pytest or a joblib worker)
   stay behind ours, so CPUID keeps being answered. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction) real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    if (sig != SIGSEGV || !getenv("EMULATED_CPU")) return real_sigaction(sig, act, old);
    if (old) *old = chained;
    if (act) chained = *act;
    return 0;
}

__attribute__((constructor)) static void emulate(void) {
    const char *cpu = getenv("EMULATED_CPU");
    if (!cpu) return;
    haswell = strcmp(cpu, "haswell") == 0;
    l2_kib = haswell ? 256 : 2048;
    l3_kib = haswell ? 20480 : 107520;
    real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    chained.sa_handler = SIG_DFL;
    struct sigaction ours;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = on_segv;
    ours.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&ours.sa_mask);
    if (real_sigaction(SIGSEGV, &ours, NULL) != 0 || syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0)
        abort();  /* no CPUID faulting here: the test that preloads this is skipped first */
}
