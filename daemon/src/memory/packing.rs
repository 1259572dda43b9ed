//! What tract keeps of a float MatMul weight: one packed copy laid out for its
//! matrix kernels, the original dropped. With a symbolic sequence length tract
//! puts a `[K, N]` weight on the kernel's row side (N ≥ 8): panels of `r` rows
//! of N, each `(K + 1) × r` elements (one padding row) rounded up to the
//! kernel's alignment in elements. `r` and the alignment follow the kernels
//! tract picks on this CPU (tract-linalg 0.23: AVX-512 r = 64, align 512;
//! AVX2/FMA r = 32, align 256; arm64 r = 32, align 16).

/// Rows per panel and panel alignment (elements) of tract's f32 kernels here.
pub fn tract_panel() -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return (64, 512);
        }
        if std::arch::is_x86_feature_detected!("fma") || std::arch::is_x86_feature_detected!("avx") {
            return (32, 256);
        }
        (4, 16)
    }
    #[cfg(target_arch = "aarch64")]
    {
        (32, 16)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        (4, 16)
    }
}

/// Bytes of tract's packed copy of an f32 `[k, n]` MatMul weight.
pub fn tract_packed_bytes(k: u64, n: u64, (r, align): (u64, u64)) -> u64 {
    if n < 8 {
        return k * n * 4;
    }
    let panel = ((k + 1) * r).div_ceil(align) * align;
    n.div_ceil(r) * panel * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_weights_pad_and_wide_ones_do_not() {
        let avx512 = (64, 512);
        // hidden 32: (32 + 1) × 64 = 2112 → 2560 elements a panel, × 1.25.
        assert_eq!(tract_packed_bytes(32, 49152, avx512), 768 * 2560 * 4);
        // N = 32 fills half a 64-row panel: × 2.
        assert_eq!(tract_packed_bytes(49152, 32, avx512), 6145 * 512 * 4);
        // hidden 576: within 1.5 %.
        let b = tract_packed_bytes(576, 1536, avx512) as f64 / (576.0 * 1536.0 * 4.0);
        assert!((1.0..1.015).contains(&b), "{b}");
        assert_eq!(tract_packed_bytes(64, 4, avx512), 64 * 4 * 4);
    }
}
