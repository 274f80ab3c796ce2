//! Pre-LayerNorm Transformer blocks and the embedding + blocks trunk shared by both models.

use burn::module::{Initializer, Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig,
    RotaryEncoding, RotaryEncodingConfig,
};
use burn::tensor::{Bool, Device, Int, Tensor};

use super::config::{NormPlacement, Positions, TransformerConfig};
use crate::attention::layer::{AttentionLayer, AttentionLayerConfig, LayerState};
use crate::attention::{AstrocyticAttention, Attention, AttentionMask, NormaliserTrace};

/// GPT-2 initialisation: weights N(0, 0.02).
pub(crate) const INIT_STD: f64 = 0.02;

/// Longest context rotary positions are precomputed for (generation may exceed `block_size`).
const ROTARY_MAX_POSITIONS: usize = 16_384;

/// A Linear layer with N(0, std) weights and zero bias (GPT-2 / nanoGPT init).
pub(crate) fn gpt_linear(d_in: usize, d_out: usize, bias: bool, std: f64, device: &Device) -> Linear {
    let mut linear = LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device);
    linear.bias = linear.bias.map(|b| Param::from_tensor(b.val().zeros_like()));
    linear
}

/// A LayerNorm of the model's width, bias and epsilon.
fn layer_norm(config: &TransformerConfig, device: &Device) -> LayerNorm {
    LayerNormConfig::new(config.n_embd).with_bias(config.bias).with_epsilon(config.layer_norm_eps).init(device)
}

/// Position-wise feed-forward network: Linear → GELU → Linear → dropout.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Expansion d → r·d.
    pub fc: Linear,
    /// Projection r·d → d.
    pub proj: Linear,
    /// Output dropout.
    pub dropout: Dropout,
}

impl Mlp {
    /// `[batch, seq, d]` → `[batch, seq, d]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let h = crate::kernels::gelu(crate::kernels::linear_rows(&self.fc, x)); // [B,T,r·d]
        self.dropout.forward(crate::kernels::linear_rows(&self.proj, h)) //          [B,T,d]
    }
}

/// Pre-LN block: x + drop(attn(ln₁ x)), then x + mlp(ln₂ x).
#[derive(Module, Debug)]
pub struct Block {
    /// Norm before attention.
    pub ln_1: LayerNorm,
    /// Multi-head attention.
    pub attn: AttentionLayer,
    /// Dropout on the attention output.
    pub attn_dropout: Dropout,
    /// Norm before the MLP (absent with the MLP).
    pub ln_2: Option<LayerNorm>,
    /// Feed-forward network (`mlp_ratio = 0` removes it).
    pub mlp: Option<Mlp>,
    /// LayerNorms after the residual additions (BERT) instead of before the sublayers.
    #[module(skip)]
    post_norm: bool,
    /// ε of the LayerNorms (`burn::nn::LayerNorm` keeps its own private).
    #[module(skip)]
    eps: f64,
}

impl Block {
    fn init(config: &TransformerConfig, layer: usize, device: &Device) -> Self {
        let d = config.n_embd;
        let out_std = INIT_STD / ((2 * config.n_layer) as f64).sqrt();
        let norm = || layer_norm(config, device);
        let attn = AttentionLayerConfig {
            d_model: d,
            heads: config.n_head,
            bias: config.bias,
            init_std: INIT_STD,
            out_init_std: out_std,
            attention: config.attention.clone(),
            layer,
            short_conv: config.short_conv,
        }
        .init(device);
        let mlp = (config.mlp_ratio > 0).then(|| {
            let hidden = config.mlp_ratio * d;
            Mlp {
                fc: gpt_linear(d, hidden, config.bias, INIT_STD, device),
                proj: gpt_linear(hidden, d, config.bias, out_std, device),
                dropout: DropoutConfig::new(config.dropout).init(),
            }
        });
        Block {
            ln_1: norm(),
            attn,
            attn_dropout: DropoutConfig::new(config.dropout).init(),
            ln_2: mlp.as_ref().map(|_| norm()),
            mlp,
            post_norm: config.norm == NormPlacement::Post,
            eps: config.layer_norm_eps,
        }
    }

    /// `ln` applied to `x` (the fused kernel where it applies).
    fn norm(&self, ln: &LayerNorm, x: Tensor<3>) -> Tensor<3> {
        crate::kernels::layer_norm(x, ln, self.eps)
    }

    /// The MLP half of the block around its residual: pre-LN x + mlp(LN x), post-LN LN(x + mlp(x)).
    fn feed_forward(&self, x: Tensor<3>) -> Tensor<3> {
        match (&self.ln_2, &self.mlp) {
            (Some(ln), Some(mlp)) if self.post_norm => self.norm(ln, x.clone() + mlp.forward(x)),
            (Some(ln), Some(mlp)) => x.clone() + mlp.forward(self.norm(ln, x)),
            _ => x,
        }
    }

    /// The input of the attention (LN x before it in pre-LN blocks, x itself in post-LN ones).
    fn attention_input(&self, x: Tensor<3>) -> Tensor<3> {
        if self.post_norm { x } else { self.norm(&self.ln_1, x) }
    }

    /// The attention output `a` added to the residual `x` (then normalised in post-LN blocks).
    fn attention_residual(&self, x: Tensor<3>, a: Tensor<3>) -> Tensor<3> {
        let y = x + self.attn_dropout.forward(a);
        if self.post_norm { self.norm(&self.ln_1, y) } else { y }
    }

    /// `x`: `[batch, seq, d]` → `[batch, seq, d]`.
    pub fn forward(&self, x: Tensor<3>, mask: &AttentionMask, rope: Option<&RotaryEncoding>) -> Tensor<3> {
        let a = self.attn.forward(self.attention_input(x.clone()), mask, rope);
        self.feed_forward(self.attention_residual(x, a))
    }

    /// The last position's row of [`Self::forward`]: `x` `[batch, seq, d]` → `[batch, 1, d]`. Every
    /// position feeds the attention; the residual, the MLP and the norms after it run on one row.
    pub fn forward_last(&self, x: Tensor<3>, mask: &AttentionMask, rope: Option<&RotaryEncoding>) -> Tensor<3> {
        let t = x.dims()[1];
        let a = self.attn.forward_last(self.attention_input(x.clone()), mask, rope); // [B,1,d]
        self.feed_forward(self.attention_residual(x.narrow(1, t - 1, 1), a))
    }

    /// Causal step over new tokens `x` `[batch, seq_new, d]`.
    pub fn forward_incremental(
        &self,
        x: Tensor<3>,
        state: Option<LayerState>,
        rope: Option<&RotaryEncoding>,
    ) -> (Tensor<3>, LayerState) {
        let (a, state) = self.attn.forward_incremental(self.attention_input(x.clone()), state, rope);
        (self.feed_forward(self.attention_residual(x, a)), state)
    }
}

/// Token (+ position) embeddings, the blocks and the final norm.
#[derive(Module, Debug)]
pub struct Trunk {
    /// Token embedding `[vocab, d]` (tied to the LM head).
    pub wte: Embedding,
    /// Learned position embedding `[block_size, d]`.
    pub wpe: Option<Embedding>,
    /// Token-type embedding `[types, d]` (BERT; every token is type 0).
    pub wtt: Option<Embedding>,
    /// LayerNorm on the summed embeddings (BERT).
    pub ln_emb: Option<LayerNorm>,
    /// Rotary position encoding (constants; not saved).
    pub rope: Option<RotaryEncoding>,
    /// Embedding dropout.
    pub drop: Dropout,
    /// The blocks.
    pub blocks: Vec<Block>,
    /// Final LayerNorm (pre-LN models; post-LN blocks end normalised).
    pub ln_f: Option<LayerNorm>,
    /// ε of the LayerNorms.
    #[module(skip)]
    eps: f64,
}

impl Trunk {
    pub(crate) fn init(config: &TransformerConfig, vocab: usize, device: &Device) -> Self {
        let d = config.n_embd;
        let embedding = |n: usize| {
            EmbeddingConfig::new(n, d).with_initializer(Initializer::Normal { mean: 0.0, std: INIT_STD }).init(device)
        };
        Trunk {
            wte: embedding(vocab),
            wpe: (config.positions == Positions::Learned).then(|| embedding(config.block_size)),
            wtt: (config.type_vocab_size > 0).then(|| embedding(config.type_vocab_size)),
            ln_emb: config.embedding_norm.then(|| layer_norm(config, device)),
            rope: (config.positions == Positions::Rotary).then(|| {
                RotaryEncodingConfig::new(ROTARY_MAX_POSITIONS.max(config.block_size), config.head_dim()).init(device)
            }),
            drop: DropoutConfig::new(config.dropout).init(),
            blocks: (0..config.n_layer).map(|layer| Block::init(config, layer, device)).collect(),
            ln_f: (config.norm == NormPlacement::Pre).then(|| layer_norm(config, device)),
            eps: config.layer_norm_eps,
        }
    }

    /// Longest context the positions allow (`None`: unbounded).
    pub fn max_positions(&self) -> Option<usize> {
        match (&self.wpe, &self.rope) {
            (Some(wpe), _) => Some(wpe.weight.shape().dims::<2>()[0]),
            (None, Some(rope)) => Some(rope.freq_complex.dims()[0]),
            (None, None) => None,
        }
    }

    /// Embeddings of `tokens` `[batch, seq]` at positions start.. → `[batch, seq, d]`.
    fn embed(&self, tokens: Tensor<2, Int>, start: usize) -> Tensor<3> {
        let [b, t] = tokens.dims();
        let x = self.wte.forward(tokens);
        let x = match &self.wpe {
            Some(wpe) => {
                let pos = Tensor::<1, Int>::arange(start as i64..(start + t) as i64, &x.device())
                    .unsqueeze_dim::<2>(0)
                    .expand([b, t]);
                x + wpe.forward(pos)
            }
            None => x,
        };
        let x = match &self.wtt {
            // Type 0 for every token: its embedding row, broadcast. [1,d] -> [1,1,d]
            Some(wtt) => x + wtt.weight.val().narrow(0, 0, 1).unsqueeze_dim::<3>(0),
            None => x,
        };
        let x = match &self.ln_emb {
            Some(ln) => crate::kernels::layer_norm(x, ln, self.eps),
            None => x,
        };
        self.drop.forward(x)
    }

    /// The final LayerNorm, where the model has one.
    fn final_norm(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.ln_f {
            Some(ln) => crate::kernels::layer_norm(x, ln, self.eps),
            None => x,
        }
    }

    /// `tokens` `[batch, seq]` → final hidden states `[batch, seq, d]`.
    pub fn forward(&self, tokens: Tensor<2, Int>, mask: &AttentionMask) -> Tensor<3> {
        let mut x = self.embed(tokens, 0);
        for block in &self.blocks {
            x = block.forward(x, mask, self.rope.as_ref());
        }
        self.final_norm(x)
    }

    /// The final hidden state of the last position only, `[batch, 1, d]`, for `tokens` `[batch, seq]`:
    /// the last block runs [`Block::forward_last`]. Equals the last row of [`Self::forward`].
    pub fn forward_last(&self, tokens: Tensor<2, Int>, mask: &AttentionMask) -> Tensor<3> {
        let mut x = self.embed(tokens, 0);
        let Some((last, rest)) = self.blocks.split_last() else {
            let t = x.dims()[1];
            return self.final_norm(x.narrow(1, t - 1, 1));
        };
        for block in rest {
            x = block.forward(x, mask, self.rope.as_ref());
        }
        self.final_norm(last.forward_last(x, mask, self.rope.as_ref()))
    }

    /// Per-block normaliser traces (softmax normaliser and astrocyte response of every head and
    /// query) for `tokens` `[batch, seq]`, one per block, without changing the forward pass.
    pub fn normalisers(&self, tokens: Tensor<2, Int>, mask: &AttentionMask) -> Vec<NormaliserTrace> {
        let mut x = self.embed(tokens, 0);
        let mut traces = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            traces.push(block.attn.normalisers(block.attention_input(x.clone()), mask, self.rope.as_ref()));
            x = block.forward(x, mask, self.rope.as_ref());
        }
        traces
    }

    /// Each block's per-head queries and keys `[batch, heads, seq, head_dim]` (positions applied) on
    /// this model's own forward pass over `tokens` — what an attention variant would see there.
    pub fn attention_inputs(&self, tokens: Tensor<2, Int>, mask: &AttentionMask) -> Vec<(Tensor<4>, Tensor<4>)> {
        let mut x = self.embed(tokens, 0);
        let mut out = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            out.push(block.attn.queries_keys(block.attention_input(x.clone()), self.rope.as_ref()));
            x = block.forward(x, mask, self.rope.as_ref());
        }
        out
    }

    /// Token embeddings `[batch, seq, d]` of `tokens` `[batch, seq]` (positions from 0): the input of
    /// block 0, for walking the blocks one at a time ([`Self::block_queries_keys`], [`Self::block_forward`]).
    pub fn embed_input(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.embed(tokens, 0)
    }

    /// Block `layer`'s per-head queries and keys `[batch, heads, seq, head_dim]` for its input `x`
    /// `[batch, seq, d]` (as [`Self::attention_inputs`] gives them for the whole model).
    pub fn block_queries_keys(&self, layer: usize, x: Tensor<3>) -> (Tensor<4>, Tensor<4>) {
        let block = &self.blocks[layer];
        block.attn.queries_keys(block.attention_input(x), self.rope.as_ref())
    }

    /// Block `layer`'s output `[batch, seq, d]` for its input `x` `[batch, seq, d]`.
    pub fn block_forward(&self, layer: usize, x: Tensor<3>, mask: &AttentionMask) -> Tensor<3> {
        self.blocks[layer].forward(x, mask, self.rope.as_ref())
    }

    /// Fits every calibrated astrocytic layer's map (see [`crate::attention::calibration`]) to its
    /// own queries and keys on `tokens` `[batch, seq]`, block by block: block ℓ is calibrated on the
    /// activity that the already-calibrated blocks before it produce. Sequences go through in groups
    /// small enough that the `[group, heads, seq, m]` hidden activity stays near 2²⁶ floats. Returns
    /// the model and the number of dimensions that fell back to ψ = 1 (only with `fallback`). Other
    /// variants pass unchanged.
    pub fn calibrate(
        self,
        tokens: Tensor<2, Int>,
        mask: &AttentionMask,
        fallback: bool,
    ) -> Result<(Self, usize), crate::ModelError> {
        let [b, t] = tokens.dims();
        let widest = self
            .blocks
            .iter()
            .map(|blk| match &blk.attn.inner {
                Attention::Astrocytic(a) => a.config().features * blk.attn.heads(),
                _ => 1,
            })
            .max()
            .unwrap_or(1);
        let group = ((1usize << 26) / (widest * t).max(1)).clamp(1, b.max(1));
        self.calibrate_in_groups(tokens, mask, fallback, group)
    }

    /// Fits every calibrated astrocytic layer's map to given per-block queries and keys
    /// `[batch, heads, seq, head_dim]` (e.g. a softmax teacher's, from [`Self::attention_inputs`]),
    /// padding `[batch, seq]` skipped. Cheaper than [`Self::calibrate`] at large m: no forward pass
    /// through the hidden neurons. Returns the model and the count of ψ = 1 fallbacks.
    pub fn calibrate_from_inputs(
        mut self,
        inputs: &[(Tensor<4>, Tensor<4>)],
        padding: Option<Tensor<2, Bool>>,
        fallback: bool,
    ) -> Result<(Self, usize), crate::ModelError> {
        let mut fallbacks = 0;
        for (layer, (block, (q, k))) in self.blocks.iter_mut().zip(inputs).enumerate() {
            if let Attention::Astrocytic(inner) = &block.attn.inner
                && inner.config().feature_map.is_calibrated()
            {
                let (calibrated, n) =
                    inner.clone().calibrate(q.clone(), k.clone(), padding.clone(), layer, fallback)?;
                fallbacks += n;
                block.attn.inner = Attention::Astrocytic(calibrated);
            }
        }
        Ok((self, fallbacks))
    }

    /// [`Self::calibrate`] with `group` sequences per forward pass (the result does not depend on it,
    /// up to float rounding).
    pub fn calibrate_in_groups(
        mut self,
        tokens: Tensor<2, Int>,
        mask: &AttentionMask,
        fallback: bool,
        group: usize,
    ) -> Result<(Self, usize), crate::ModelError> {
        let b = tokens.dims()[0];
        let group = group.max(1);
        // Per group: its hidden states and its mask.
        let mut groups: Vec<(Tensor<3>, AttentionMask)> = (0..b)
            .step_by(group)
            .map(|start| {
                let len = group.min(b - start);
                let mask = AttentionMask {
                    causal: mask.causal,
                    key_padding: mask.key_padding.clone().map(|p| p.narrow(0, start, len)),
                };
                (self.embed(tokens.clone().narrow(0, start, len), 0), mask)
            })
            .collect();
        let mut fallbacks = 0;
        let blocks = std::mem::take(&mut self.blocks);
        for (layer, mut block) in blocks.into_iter().enumerate() {
            if let Attention::Astrocytic(inner) = &block.attn.inner
                && inner.config().feature_map.is_calibrated()
            {
                let mut stats = Vec::new();
                for (x, m) in &groups {
                    let (q, k) = block.attn.queries_keys(block.attention_input(x.clone()), self.rope.as_ref());
                    AstrocyticAttention::accumulate(&mut stats, q, k, m.key_padding.clone(), layer)?;
                }
                let (calibrated, n) = inner.clone().calibrate_from(&stats, layer, fallback)?;
                fallbacks += n;
                block.attn.inner = Attention::Astrocytic(calibrated);
            }
            for (x, m) in groups.iter_mut() {
                *x = block.forward(x.clone(), m, self.rope.as_ref());
            }
            self.blocks.push(block);
        }
        Ok((self, fallbacks))
    }

    /// Causal step: new `tokens` `[batch, seq_new]` after `start` tokens summarised in `states`
    /// (one per block, empty for a fresh sequence) → hidden states `[batch, seq_new, d]`.
    pub fn forward_incremental(
        &self,
        tokens: Tensor<2, Int>,
        start: usize,
        states: Vec<LayerState>,
    ) -> (Tensor<3>, Vec<LayerState>) {
        let mut x = self.embed(tokens, start);
        let mut states = states.into_iter();
        let mut next = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (y, s) = block.forward_incremental(x, states.next(), self.rope.as_ref());
            x = y;
            next.push(s);
        }
        (self.final_norm(x), next)
    }
}
