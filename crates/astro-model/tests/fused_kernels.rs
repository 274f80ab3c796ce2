//! The fused kernels (`astro_model::kernels`) compute what the plainly written paths compute:
//! softmax attention's output and, through autodiff, its gradients with respect to q, k and v.
//!
//! On flex these exercise the hand-written backward; on other backends the fused entry point is
//! Burn's own attention and the comparisons still hold.

mod common;

use astro_model::attention::{AttentionMask, InnerAttention, SoftmaxConfig};
use astro_model::kernels::{fused_attention, fused_attention_grads};
use burn::tensor::{DType, Device, Tensor};
use common::{device, host, normal4, rel_err};

/// max|a − b| / max(max|b|, 1): relative where the reference is large, absolute where it is near 0
/// (a one-token softmax has dq = 0 exactly in the reference and ~1e-8 from rounding in a kernel).
fn err(a: &Tensor<4>, b: &Tensor<4>) -> f64 {
    let (a, b) = (host(a), host(b));
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    diff / b.iter().map(|y| y.abs()).fold(1.0, f64::max)
}

/// (output, dq, dk, dv) of `sum(attention(q, k, v) ∘ w)` through either path, on an autodiff device.
fn run(
    shape: [usize; 4],
    causal: bool,
    fused: bool,
    dtype: DType,
    dev: &Device,
) -> (Tensor<4>, Tensor<4>, Tensor<4>, Tensor<4>) {
    let ad = dev.clone().autodiff();
    let q = normal4(shape, 1.0, 1, dtype, &ad).require_grad();
    let k = normal4(shape, 1.0, 2, dtype, &ad).require_grad();
    let v = normal4(shape, 1.0, 3, dtype, &ad).require_grad();
    let w = normal4(shape, 1.0, 4, dtype, &ad);
    let mask = if causal { AttentionMask::causal() } else { AttentionMask::bidirectional() };
    let out = if fused {
        fused_attention(q.clone(), k.clone(), v.clone(), causal)
    } else {
        SoftmaxConfig::default().init().forward_reference(q.clone(), k.clone(), v.clone(), &mask)
    };
    let grads = (out.clone() * w).sum().backward();
    let g = |x: &Tensor<4>| x.grad(&grads).expect("input receives a gradient");
    (out.inner(), g(&q), g(&k), g(&v))
}

#[test]
fn fused_attention_and_its_gradients_match_the_reference_path() {
    let dev = device();
    for causal in [true, false] {
        // 150 tokens: strips of 64, 64 and 22 rows; 4500: strips of 58 rows (the score-tile limit).
        for shape in [[2, 3, 37, 8], [1, 2, 1, 4], [1, 1, 70, 32], [1, 2, 150, 8], [1, 1, 4500, 2]] {
            let fused = run(shape, causal, true, DType::F32, &dev);
            let reference = run(shape, causal, false, DType::F32, &dev);
            let label = format!("causal={causal} shape={shape:?}");
            for (name, a, b) in [
                ("output", &fused.0, &reference.0),
                ("dq", &fused.1, &reference.1),
                ("dk", &fused.2, &reference.2),
                ("dv", &fused.3, &reference.3),
            ] {
                let e = err(a, b);
                assert!(e < 2e-5, "{label}: {name} differs from the reference by {e:e}");
            }
        }
    }
}

#[test]
fn fused_attention_is_causal() {
    // Changing the last token's key and value must not change any earlier output or gradient.
    let dev = device();
    let shape = [1, 2, 9, 4];
    let q = normal4(shape, 1.0, 1, DType::F32, &dev);
    let k = normal4(shape, 1.0, 2, DType::F32, &dev);
    let v = normal4(shape, 1.0, 3, DType::F32, &dev);
    let bump = |x: Tensor<4>| {
        let last = x.clone().narrow(2, 8, 1).add_scalar(5.0);
        Tensor::cat(vec![x.narrow(2, 0, 8), last], 2)
    };
    let a = fused_attention(q.clone(), k.clone(), v.clone(), true).narrow(2, 0, 8);
    let b = fused_attention(q, bump(k), bump(v), true).narrow(2, 0, 8);
    assert!(rel_err(&a, &b) < 1e-7, "an earlier output read the last token");
}

#[test]
fn f64_inputs_take_the_generic_path_and_agree() {
    let dev = device();
    let fused = run([1, 2, 11, 8], true, true, DType::F64, &dev);
    let reference = run([1, 2, 11, 8], true, false, DType::F64, &dev);
    for (a, b) in
        [(&fused.0, &reference.0), (&fused.1, &reference.1), (&fused.2, &reference.2), (&fused.3, &reference.3)]
    {
        assert!(err(a, b) < 1e-6, "f64 paths differ by {:e}", err(a, b));
    }
}

#[test]
fn the_kernel_backward_is_offered_where_it_applies() {
    let dev = device();
    let shape = [1, 1, 5, 4];
    let x = normal4(shape, 1.0, 1, DType::F32, &dev);
    let grads = fused_attention_grads(x.clone(), x.clone(), x.clone(), x.clone(), true);
    let flex = matches!(astro_model::device::BackendKind::default_kind(), Ok(astro_model::device::BackendKind::Flex));
    assert_eq!(grads.is_some(), flex, "the fused backward applies exactly on flex");
    if let Some((dq, dk, dv)) = grads {
        assert_eq!([dq.dims(), dk.dims(), dv.dims()], [shape; 3]);
    }
}

#[test]
fn fused_exp_and_gelu_match_burn_with_gradients() {
    let dev = device();
    let ad = dev.clone().autodiff();
    let shape = [2, 3, 17, 9];
    for (name, scale) in [("exp", 3.0), ("gelu", 4.0)] {
        let x = normal4(shape, scale, 7, DType::F32, &ad).require_grad();
        let w = normal4(shape, 1.0, 8, DType::F32, &ad);
        let (ours, theirs) = match name {
            "exp" => (astro_model::kernels::exp(x.clone()), x.clone().exp()),
            _ => (astro_model::kernels::gelu(x.clone()), burn::tensor::activation::gelu(x.clone())),
        };
        assert!(rel_err(&ours, &theirs) < 1e-6, "{name}: values differ by {:e}", rel_err(&ours, &theirs));
        let g_ours = x.grad(&(ours * w.clone()).sum().backward()).expect("gradient");
        let g_theirs = x.grad(&(theirs * w).sum().backward()).expect("gradient");
        assert!(rel_err(&g_ours, &g_theirs) < 1e-5, "{name}: gradients differ by {:e}", rel_err(&g_ours, &g_theirs));
    }
    // Very negative log-activities ("no activity") are exactly 0, as with libm.
    let x = Tensor::<1>::from_floats([-1.0e30, -200.0, 0.0], &dev);
    let y = astro_model::kernels::exp(x).into_data().try_to_vec::<f32>().expect("f32");
    assert_eq!(y, vec![0.0, 0.0, 1.0]);
}

#[test]
fn fused_layer_norm_matches_burn_with_gradients() {
    use burn::nn::LayerNormConfig;
    let dev = device();
    let ad = dev.clone().autodiff();
    for (bias, eps) in [(true, 1e-5), (false, 1e-12)] {
        let mut ln = LayerNormConfig::new(24).with_bias(bias).with_epsilon(eps).init(&ad);
        // Non-trivial γ, β so their gradients and effects are tested.
        ln.gamma = burn::module::Param::from_tensor(normal4([1, 1, 1, 24], 1.0, 5, DType::F32, &ad).reshape([24]));
        if bias {
            ln.beta =
                Some(burn::module::Param::from_tensor(normal4([1, 1, 1, 24], 1.0, 6, DType::F32, &ad).reshape([24])));
        }
        let x = normal4([2, 3, 17, 24], 2.0, 7, DType::F32, &ad).add_scalar(3.0).require_grad();
        let w = normal4([2, 3, 17, 24], 1.0, 8, DType::F32, &ad);
        let ours = astro_model::kernels::layer_norm(x.clone(), &ln, eps);
        let theirs = ln.forward(x.clone());
        assert!(err(&ours, &theirs) < 1e-5, "bias={bias}: values differ by {:e}", err(&ours, &theirs));
        let (g1, g2) = ((ours * w.clone()).sum().backward(), (theirs * w).sum().backward());
        let dx = |g| x.grad(g).expect("dx");
        assert!(err(&dx(&g1), &dx(&g2)) < 1e-5, "bias={bias}: dx differs by {:e}", err(&dx(&g1), &dx(&g2)));
        let lift = |t: Tensor<1>| t.reshape([1, 1, 1, 24]);
        let dgamma = |g| lift(ln.gamma.val().grad(g).expect("dγ"));
        assert!(err(&dgamma(&g1), &dgamma(&g2)) < 1e-5, "bias={bias}: dγ differs");
        if let Some(beta) = &ln.beta {
            let dbeta = |g| lift(beta.val().grad(g).expect("dβ"));
            assert!(err(&dbeta(&g1), &dbeta(&g2)) < 1e-5, "bias={bias}: dβ differs");
        }
    }
}

#[test]
fn fused_exp_sub_matches_the_composition_and_treats_the_shift_as_constant() {
    let dev = device();
    let ad = dev.clone().autodiff();
    let x = normal4([2, 3, 5, 16], 4.0, 9, DType::F32, &ad).require_grad();
    let w = normal4([2, 3, 5, 16], 1.0, 10, DType::F32, &ad);
    // A row-wise and a block-wise (per head) stabiliser, as the astrocyte's query and key sides use.
    for shift in [x.clone().detach().max_dim(3), x.clone().detach().max_dim(3).max_dim(2)] {
        let ours = astro_model::kernels::exp_sub(x.clone(), shift.clone());
        let theirs = (x.clone() - shift).exp();
        assert!(err(&ours, &theirs) < 1e-6, "values differ by {:e}", err(&ours, &theirs));
        let g_ours = x.grad(&(ours * w.clone()).sum().backward()).expect("gradient");
        let g_theirs = x.grad(&(theirs * w.clone()).sum().backward()).expect("gradient");
        assert!(err(&g_ours, &g_theirs) < 1e-6, "gradients differ by {:e}", err(&g_ours, &g_theirs));
    }
    // A shift that is not a trailing broadcast takes the composed path and still agrees.
    let middle = x.clone().detach().max_dim(2); // [2,3,1,16]
    let ours = astro_model::kernels::exp_sub(x.clone(), middle.clone());
    assert!(err(&ours, &(x - middle).exp()) < 1e-6);
}

#[test]
fn fused_rotary_matches_burn_with_gradients() {
    use burn::nn::RotaryEncodingConfig;
    let dev = device();
    let ad = dev.clone().autodiff();
    let rope = RotaryEncodingConfig::new(64, 8).init(&ad);
    let x = normal4([2, 3, 17, 8], 1.5, 11, DType::F32, &ad).require_grad();
    let w = normal4([2, 3, 17, 8], 1.0, 12, DType::F32, &ad);
    // Contiguous heads, and heads as a view of [B,T,H,D] (how the attention layer splits them);
    // each backward consumes its graph, so every path builds its own input.
    let input = |strided: bool| if strided { x.clone().swap_dims(1, 2).swap_dims(1, 2) } else { x.clone() };
    for (strided, start) in [(false, 0), (false, 5), (true, 40)] {
        let ours = astro_model::kernels::rotary(&rope, input(strided), start);
        let theirs = rope.apply(input(strided), start);
        assert!(err(&ours, &theirs) < 1e-6, "start {start}: values differ by {:e}", err(&ours, &theirs));
        let g_ours = x.grad(&(ours * w.clone()).sum().backward()).expect("gradient");
        let g_theirs = x.grad(&(theirs * w.clone()).sum().backward()).expect("gradient");
        assert!(err(&g_ours, &g_theirs) < 1e-6, "start {start}: gradients differ by {:e}", err(&g_ours, &g_theirs));
    }
    // A rotation: position 0 is left as it is, every row keeps its length, later rows move.
    let x = x.inner();
    let y = astro_model::kernels::rotary(&RotaryEncodingConfig::new(64, 8).init(&dev), x.clone(), 0);
    let first = |t: &Tensor<4>| t.clone().narrow(2, 0, 1);
    assert!(err(&first(&y), &first(&x)) < 1e-7, "position 0 is not the identity");
    let norms = |t: &Tensor<4>| (t.clone() * t.clone()).sum_dim(3);
    assert!(err(&norms(&y), &norms(&x)) < 1e-5, "a rotation changed a row's length");
    assert!(err(&y, &x) > 1e-2, "later positions left the input unchanged");
}

#[test]
fn dense_layers_in_training_match_burn_with_gradients() {
    use burn::module::Param;
    use burn::nn::LinearConfig;
    let dev = device();
    let ad = dev.clone().autodiff();
    // Small products run on one thread; the last (2100 × 64 × 64) is split over rayon's threads.
    for (bias, t, d_in, d_out) in [(true, 37, 12, 20), (false, 37, 12, 20), (true, 700, 64, 64)] {
        let mut layer = LinearConfig::new(d_in, d_out).with_bias(bias).init(&ad);
        layer.weight =
            Param::from_tensor(normal4([1, 1, d_in, d_out], 0.5, 13, DType::F32, &ad).reshape([d_in, d_out]));
        if bias {
            layer.bias = Some(Param::from_tensor(normal4([1, 1, 1, d_out], 1.0, 14, DType::F32, &ad).reshape([d_out])));
        }
        let x = normal4([1, 3, t, d_in], 1.0, 15, DType::F32, &ad).reshape([3, t, d_in]).require_grad();
        let w = normal4([1, 3, t, d_out], 1.0, 16, DType::F32, &ad).reshape([3, t, d_out]);
        let ours = astro_model::kernels::linear_rows(&layer, x.clone());
        let theirs = layer.forward(x.clone());
        let lift = |t: Tensor<3>| t.unsqueeze::<4>();
        assert!(err(&lift(ours.clone()), &lift(theirs.clone())) < 1e-6, "bias={bias}, {t} rows: values differ");
        let (g1, g2) = ((ours * w.clone()).sum().backward(), (theirs * w).sum().backward());
        let dx = |g| lift(x.grad(g).expect("dx"));
        assert!(err(&dx(&g1), &dx(&g2)) < 1e-5, "bias={bias}, {t} rows: dx differs by {:e}", err(&dx(&g1), &dx(&g2)));
        let dw = |g| layer.weight.val().grad(g).expect("dw").unsqueeze::<4>();
        assert!(err(&dw(&g1), &dw(&g2)) < 1e-5, "bias={bias}, {t} rows: dw differs by {:e}", err(&dw(&g1), &dw(&g2)));
        if let Some(b) = &layer.bias {
            let db = |g| b.val().grad(g).expect("db").unsqueeze::<4>();
            assert!(
                err(&db(&g1), &db(&g2)) < 1e-5,
                "bias={bias}, {t} rows: db differs by {:e}",
                err(&db(&g1), &db(&g2))
            );
        }
    }
}

#[test]
fn short_convolution_matches_burn_with_gradients() {
    use astro_model::kernels::{short_conv, short_conv_reference};
    let dev = device();
    let ad = dev.clone().autodiff();
    let lift = |t: Tensor<3>| t.unsqueeze::<4>();
    // Kernels of 1–4 taps; one token, odd lengths, and 700 rows (several parallel blocks).
    for (k, batch, t, c) in [(4, 2, 37, 12), (1, 2, 9, 6), (2, 1, 1, 5), (4, 3, 700, 24)] {
        // The K − 1 rows before the sequence are real inputs too (a continued sequence).
        let full = normal4([1, batch, k - 1 + t, c], 1.0, 21, DType::F32, &ad).reshape([batch, k - 1 + t, c]);
        let full = full.require_grad();
        let weight = normal4([1, 1, c, k], 0.5, 22, DType::F32, &ad).reshape([c, k]).require_grad();
        let w = normal4([1, batch, t, c], 1.0, 23, DType::F32, &ad).reshape([batch, t, c]);
        let ours = short_conv(full.clone(), weight.clone());
        let theirs = short_conv_reference(full.clone(), weight.clone());
        assert_eq!(ours.dims(), [batch, t, c]);
        let e = err(&lift(ours.clone()), &lift(theirs.clone()));
        assert!(e < 1e-6, "K = {k}, T = {t}: values differ by {e:e}");
        let (g1, g2) = ((ours * w.clone()).sum().backward(), (theirs * w).sum().backward());
        let dfull = |g| lift(full.grad(g).expect("d full"));
        let e = err(&dfull(&g1), &dfull(&g2));
        assert!(e < 1e-5, "K = {k}, T = {t}: d full differs by {e:e}");
        let dw = |g| weight.grad(g).expect("dw").unsqueeze::<4>();
        let e = err(&dw(&g1), &dw(&g2));
        assert!(e < 1e-5, "K = {k}, T = {t}: dw differs by {e:e}");
    }
    // Causal: an input row moves only the outputs at and after it.
    let full = normal4([1, 1, 3 + 20, 4], 1.0, 24, DType::F32, &dev).reshape([1, 23, 4]);
    let weight = normal4([1, 1, 4, 4], 1.0, 25, DType::F32, &dev).reshape([4, 4]);
    let before = short_conv(full.clone(), weight.clone());
    let bumped = full.clone().slice_assign([0..1, 13..14, 0..4], Tensor::ones([1, 1, 4], &dev).mul_scalar(9.0));
    let after = short_conv(bumped, weight);
    let early = |t: &Tensor<3>| lift(t.clone().narrow(1, 0, 10));
    assert!(err(&early(&after), &early(&before)) == 0.0, "a later input changed an earlier output");
    assert!(err(&lift(after), &lift(before)) > 1e-3, "the bumped input changed nothing");
}
