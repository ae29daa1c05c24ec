// How the CPU kernels pick their code paths: the run-time CPU feature check for the AVX2 + FMA
// kernels (compiled for them with __attribute__((target("avx2,fma"))) whatever the build flags), and
// static_switch, which turns run-time flags into compile-time ones. Private to csrc/cpu/.
#pragma once

#include <type_traits>

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define VSR_FAST_X86_SIMD 1
#include <immintrin.h>
#endif

namespace vsr_fast {

// Whether the AVX2 + FMA kernels may run on this CPU.
inline bool cpu_has_avx2_fma() {
#ifdef VSR_FAST_X86_SIMD
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

// static_switch(fn, b0, b1, ...) calls fn(std::bool_constant<b0>{}, std::bool_constant<b1>{}, ...)
// for run-time bools: one instantiation of fn's body per combination, each with its flags known at
// compile time.
template <typename Fn>
void static_switch(Fn&& fn) {
  fn();
}

template <typename Fn, typename... Rest>
void static_switch(Fn&& fn, bool first, Rest... rest) {
  if (first) {
    static_switch([&](auto... known) { fn(std::true_type{}, known...); }, rest...);
  } else {
    static_switch([&](auto... known) { fn(std::false_type{}, known...); }, rest...);
  }
}

}  // namespace vsr_fast
