#!/usr/bin/env bash
# Run a command as it runs on a CPU without AVX-512 (AVX2 at most), on an AVX-512 one.
#
#   tools/avx2_cpu/run.sh scenic-baselines train --config vit_digits --workdir /tmp/w
#
# hide_avx512.c (LD_PRELOAD) makes the CPUID instruction report no AVX-512, so XLA, XNNPACK,
# oneDNN and NumPy pick their AVX2 kernels; glibc's own string functions are told the same
# through GLIBC_TUNABLES. Needs gcc and Linux's CPUID faulting (`cpuid_fault` in
# /proc/cpuinfo). How faithful it is: tools/README.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -eq 0 ]; then
  echo "usage: tools/avx2_cpu/run.sh COMMAND [ARGS...]" >&2
  exit 2
fi
if ! command -v gcc >/dev/null; then
  echo "avx2_cpu/run.sh: gcc is needed to build hide_avx512.c and was not found on PATH" >&2
  exit 2
fi
if ! grep -qw cpuid_fault /proc/cpuinfo; then
  echo "avx2_cpu/run.sh: this CPU or kernel has no CPUID faulting (no cpuid_fault in /proc/cpuinfo)" >&2
  exit 2
fi
lib="${TMPDIR:-/tmp}/hide_avx512-$(id -u)-$(sha1sum "$here/hide_avx512.c" | cut -c1-12).so"
if [ ! -f "$lib" ]; then
  gcc -O2 -shared -fPIC -o "$lib.$$" "$here/hide_avx512.c" -ldl
  mv "$lib.$$" "$lib"
fi
export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
hwcaps="glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-AVX512ER,-AVX512PF"
# Setting GLIBC_TUNABLES opts out of the huge-page malloc the scenic-* CLIs turn on for
# themselves (scenic.common_lib.allocator): add it back unless the caller set tunables.
rest="${GLIBC_TUNABLES-glibc.malloc.hugetlb=1}"
export GLIBC_TUNABLES="$hwcaps${rest:+:$rest}"
exec "$@"
