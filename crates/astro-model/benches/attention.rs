//! Attention forward and forward+backward per variant at T ∈ {256, 1024, 4096}
//! (batch 2, 4 heads, head width 32): time with criterion, peak heap memory with a counting
//! allocator (printed as a table before the timings).
//!
//! `cargo bench -p astro-model --bench attention` (set `ASTRO_BENCH_T=256,1024` to restrict lengths).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use astro_model::attention::{
    AstrocyticConfig, Attention, AttentionConfig, AttentionMask, InnerAttention, LinearConfig, SoftmaxConfig,
};
use burn::tensor::{Device, Distribution, Tensor};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// Counts live heap bytes and their high-water mark.
struct PeakAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size > layout.size() {
                let live = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size - layout.size();
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

const BATCH: usize = 2;
const HEADS: usize = 4;
const HEAD_DIM: usize = 32;

fn lengths() -> Vec<usize> {
    std::env::var("ASTRO_BENCH_T")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![256, 1024, 4096])
}

fn variants() -> Vec<(&'static str, AttentionConfig)> {
    vec![
        ("softmax", AttentionConfig::Softmax(SoftmaxConfig::default())),
        ("astrocytic-m256", AttentionConfig::Astrocytic(AstrocyticConfig::default())),
        ("linear-elu", AttentionConfig::Linear(LinearConfig::default())),
    ]
}

fn inputs(t: usize, device: &Device) -> [Tensor<4>; 3] {
    let shape = [BATCH, HEADS, t, HEAD_DIM];
    [0, 1, 2].map(|_| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device))
}

/// One causal forward; returns a scalar to force evaluation.
fn forward(attn: &Attention, x: &[Tensor<4>; 3]) -> f32 {
    let y = attn.forward(x[0].clone(), x[1].clone(), x[2].clone(), &AttentionMask::causal());
    y.sum().into_scalar::<f32>()
}

/// One causal forward + backward through q, k, v.
fn forward_backward(attn: &Attention, x: &[Tensor<4>; 3]) -> f32 {
    let [q, k, v] = x.clone().map(|t| t.detach().require_grad());
    let y = attn.forward(q.clone(), k.clone(), v.clone(), &AttentionMask::causal());
    let grads = y.sum().backward();
    let g = q.grad(&grads).expect("gradient of q");
    g.sum().into_scalar::<f32>()
}

/// Softmax's backward keeps several [B, H, T, T] tensors: beyond T = 4096 that exceeds 8 GiB.
fn quadratic_backward_too_big(config: &AttentionConfig, t: usize) -> bool {
    matches!(config, AttentionConfig::Softmax(_)) && t > 4096
}

fn peak_mib(f: impl FnOnce() -> f32) -> f64 {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    std::hint::black_box(f());
    (PEAK.load(Ordering::Relaxed) - base) as f64 / (1024.0 * 1024.0)
}

fn memory_table() {
    let device = astro_model::device::default_device().expect("backend");
    let ad = device.clone().autodiff();
    println!("\npeak heap memory above baseline, MiB (batch {BATCH}, {HEADS} heads, head width {HEAD_DIM}, causal)");
    println!("| variant | T | forward | forward+backward |");
    println!("|---|---:|---:|---:|");
    for (name, config) in variants() {
        for &t in &lengths() {
            let attn = config.init(HEADS, HEAD_DIM, 0, &device);
            let x = inputs(t, &device);
            let fwd = peak_mib(|| forward(&attn, &x));
            let bwd = if quadratic_backward_too_big(&config, t) {
                "skipped (O(T²) > 8 GiB)".to_string()
            } else {
                let attn_ad = config.init(HEADS, HEAD_DIM, 0, &ad);
                let x_ad = inputs(t, &ad);
                format!("{:.1}", peak_mib(|| forward_backward(&attn_ad, &x_ad)))
            };
            println!("| {name} | {t} | {fwd:.1} | {bwd} |");
        }
    }
    println!();
}

fn bench(c: &mut Criterion) {
    memory_table();
    let device = astro_model::device::default_device().expect("backend");
    let ad = device.clone().autodiff();
    for (mode, autodiff) in [("forward", false), ("forward+backward", true)] {
        let mut group = c.benchmark_group(format!("attention/{mode}"));
        group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
        for (name, config) in variants() {
            for &t in &lengths() {
                if autodiff && quadratic_backward_too_big(&config, t) {
                    continue;
                }
                let dev = if autodiff { &ad } else { &device };
                let attn = config.init(HEADS, HEAD_DIM, 0, dev);
                let x = inputs(t, dev);
                group.bench_with_input(BenchmarkId::new(name, t), &t, |b, _| {
                    b.iter(|| if autodiff { forward_backward(&attn, &x) } else { forward(&attn, &x) })
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
