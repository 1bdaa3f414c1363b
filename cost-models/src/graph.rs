//! The layer graph of RegNet-Y + SwAV head for one training workload:
//! every conv / BN / ReLU / SE op / add / linear as a node with shapes,
//! parameters, FLOPs and the bytes autograd saves, grouped into named blocks
//! (`stem`, `s3.b12`, `head.mlp`, `head.proto`) shared with the executor.
//!
//! Saved bytes follow what libtorch keeps for the standard PyTorch RegNet-Y
//! block (torchvision's, in-place ReLU after BN) in training mode. Each
//! storage is counted once, at the layer that produced it:
//! * conv: saves its input (counted at the producer) → a conv output is saved
//!   when a BN consumes it;
//! * BN: saves its input and fp32 mean + inverse std (2·C·4 bytes); its
//!   output is saved when an in-place ReLU follows (ReLU saves its result);
//! * SE: pooled input (saved by the reduce conv), ReLU result, sigmoid result,
//!   and the multiply's output (saved by conv `c`); the expand conv's output
//!   is not saved (sigmoid keeps its result);
//! * the residual add's output is saved (the in-place ReLU's result is the
//!   block output and the next block's conv input);
//! * head: pooled features, each Linear's output (ReLU in place / normalise
//!   input), the L2 norms, the normalised features; prototypes in fp32.
//!
//! Parameters are never counted as activations.

use crate::config::ModelConfig;
use crate::padding::ChannelPadding;
use crate::quantity::{Bytes, DType, Flops};
use crate::regnet::BlockSpec;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

/// NCHW shape (linears use H = W = 1).
pub type Shape = [u64; 4];

fn numel(s: &Shape) -> u64 {
    s.iter().product()
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LayerKind {
    Input,
    Conv { kernel: u64, stride: u64, groups: u64, bias: bool },
    BatchNorm,
    Relu,
    AvgPool,
    Sigmoid,
    Mul,
    Add,
    Linear { bias: bool },
    Normalize,
}

/// One op of the network for the workload the graph was built for.
#[derive(Clone, Debug, Serialize)]
pub struct Layer {
    /// `s1.b0.a`, `stem.bn`, `head.mlp.1`, ... (`@R` suffix: crop resolution).
    pub name: String,
    /// Index into [`ModelGraph::blocks`].
    pub block: usize,
    pub kind: LayerKind,
    pub in_shape: Shape,
    pub out_shape: Shape,
    /// Parameter tensors `(name, numel)`; only on the first crop group's copy.
    pub params: Vec<(String, u64)>,
    pub fwd_flops: Flops,
    pub bwd_flops: Flops,
    /// Bytes this layer adds to what autograd keeps for backward.
    pub saved: Bytes,
    /// Activation bytes read + written in forward (for memory-bound ops).
    pub io_bytes: Bytes,
    pub dtype: DType,
}

impl Layer {
    pub fn param_count(&self) -> u64 {
        self.params.iter().map(|(_, n)| n).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    Stem,
    Residual,
    HeadMlp,
    HeadProto,
}

/// A named block with its totals over all crop groups.
#[derive(Clone, Debug, Serialize)]
pub struct Block {
    pub name: String,
    pub kind: BlockKind,
    /// 1-based stage for residual blocks.
    pub stage: Option<usize>,
    #[serde(skip)]
    pub layers: Vec<NodeIndex>,
    pub params: u64,
    pub fwd_flops: Flops,
    pub bwd_flops: Flops,
    /// Everything autograd saves inside the block, its output included.
    pub saved: Bytes,
    /// Bytes of the block's output tensor(s) (the next block's input).
    pub output: Bytes,
    /// Bytes of the block's input tensor(s).
    pub input: Bytes,
    /// Largest single activation the block produces (backward working set).
    pub largest_activation: Bytes,
    /// Parameter tensors `(name, numel)` in forward order.
    pub param_tensors: Vec<(String, u64)>,
}

impl Block {
    pub fn is_trunk(&self) -> bool {
        matches!(self.kind, BlockKind::Stem | BlockKind::Residual)
    }
}

/// How many crops of which resolution each image contributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CropGroup {
    pub count: u64,
    pub resolution: u64,
}

/// One rank's work: `images` images, each cut into the crop groups.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Workload {
    pub images: u64,
    pub crops: Vec<CropGroup>,
    /// Compute (activation) dtype; prototypes are fp32 regardless.
    pub dtype: DType,
}

/// Crop groups as people and profile keys name them, e.g. `2x32+2x16`.
pub fn crops_label(crops: &[CropGroup]) -> String {
    crops.iter().map(|c| format!("{}x{}", c.count, c.resolution)).collect::<Vec<_>>().join("+")
}

impl Workload {
    /// A single crop of `resolution` per image.
    pub fn single(images: u64, resolution: u64, dtype: DType) -> Workload {
        Workload { images, crops: vec![CropGroup { count: 1, resolution }], dtype }
    }
    pub fn total_crops(&self) -> u64 {
        self.images * self.crops.iter().map(|c| c.count).sum::<u64>()
    }
    /// The crop groups for people and profile keys, e.g. `2x32+2x16`.
    pub fn crops_label(&self) -> String {
        crops_label(&self.crops)
    }
}

/// The network as a petgraph DAG (edges carry data, residuals included).
#[derive(Clone, Debug)]
pub struct ModelGraph {
    pub graph: DiGraph<Layer, ()>,
    pub blocks: Vec<Block>,
    pub workload: Workload,
}

impl ModelGraph {
    /// The graph as seerscale's executor runs it: squeeze-excitation's 1x1
    /// convolutions see a 1x1 input there and run as the matrix multiplies
    /// they are (`executor::model`), so they are costed as Linear layers
    /// (same FLOPs, parameters and tensors). Graphs of other frameworks'
    /// runs ([`ModelGraph::build`]) keep them convolutions.
    ///
    /// With channel padding on, every layer runs at its padded widths
    /// (`padding`): FLOPs, activations and kernel shapes are the padded
    /// model's, parameters (the unpadded model's) are what FSDP shards, and
    /// each weight the padding enlarges is a padded copy of it, saved for
    /// backward beside the gathered original.
    pub fn build_executed(model: &ModelConfig, workload: &Workload, padding: ChannelPadding) -> ModelGraph {
        let mut g = match padding {
            ChannelPadding::Off => ModelGraph::build(model, workload),
            ChannelPadding::On => {
                let real = ModelGraph::build(model, workload);
                let (padded_model, padded_blocks) = crate::padding::padded_model(model);
                let mut g = ModelGraph::build_from(&padded_model, &padded_blocks, workload);
                for (l, r) in g.graph.node_weights_mut().zip(real.graph.node_weights()) {
                    let copies: u64 = l.params.iter().zip(&r.params).map(|((_, padded), (_, n))| if padded > n { *padded } else { 0 }).sum();
                    l.saved += Bytes(copies * l.dtype.size());
                    l.params = r.params.clone();
                }
                for (b, r) in g.blocks.iter_mut().zip(&real.blocks) {
                    b.params = r.params;
                    b.param_tensors = r.param_tensors.clone();
                    b.saved = b.layers.iter().map(|&i| g.graph[i].saved).sum();
                }
                g
            }
        };
        for l in g.graph.node_weights_mut() {
            let se = l.name.contains(".se.reduce") || l.name.contains(".se.expand");
            if let (true, LayerKind::Conv { kernel: 1, groups: 1, bias, .. }, [_, _, 1, 1]) = (se, l.kind.clone(), l.in_shape) {
                l.kind = LayerKind::Linear { bias };
            }
        }
        g
    }

    pub fn build(model: &ModelConfig, workload: &Workload) -> ModelGraph {
        ModelGraph::build_from(model, &model.regnet.blocks(), workload)
    }

    /// The graph of `specs` (the residual blocks) with `model`'s stem width
    /// and head.
    fn build_from(model: &ModelConfig, specs: &[BlockSpec], workload: &Workload) -> ModelGraph {
        let mut b = Builder { g: DiGraph::new(), blocks: Vec::new(), dtype: workload.dtype };
        let spec = &model.regnet;
        // Block skeleton first so every crop group's layers land in the same blocks.
        b.block("stem", BlockKind::Stem, None);
        for bs in specs {
            b.block(&bs.name, BlockKind::Residual, Some(bs.stage));
        }
        let mlp_block = b.block("head.mlp", BlockKind::HeadMlp, None);
        let proto_block = b.block("head.proto", BlockKind::HeadProto, None);

        let mut trunk_outputs = Vec::new();
        for (gi, crop) in workload.crops.iter().enumerate() {
            let first = gi == 0;
            let sfx = if workload.crops.len() > 1 { format!("@{}", crop.resolution) } else { String::new() };
            let n = workload.images * crop.count;
            let input_shape = [n, 3, crop.resolution, crop.resolution];
            let img = b.layer(0, format!("input{sfx}"), LayerKind::Input, input_shape, input_shape, vec![], None, first, true);
            // Stem: conv3x3/2, BN, ReLU.
            let (c, x) = b.conv(0, "stem.conv", &sfx, img, spec.stem_width as u64, 3, 2, 1, false, true, first, true);
            let x = b.bn_relu(0, "stem.bn", &sfx, c, x, first);
            let mut prev = x;
            for (i, bs) in specs.iter().enumerate() {
                prev = b.res_block(i + 1, bs, &sfx, prev, first);
            }
            trunk_outputs.push(prev);
        }

        // Head over all crops: pool each group's trunk output, then MLP on the rows.
        let rows = workload.total_crops();
        let w = specs.last().map_or(spec.stem_width, |s| s.w_out) as u64;
        let pooled = b.layer(mlp_block, "head.pool".into(), LayerKind::AvgPool, [rows, w, 1, 1], [rows, w, 1, 1], vec![], None, true, true);
        for t in &trunk_outputs {
            b.g.add_edge(*t, pooled, ());
        }
        // The pool reads the whole trunk output.
        let trunk_out_bytes: u64 = trunk_outputs.iter().map(|t| numel(&b.g[*t].out_shape)).sum::<u64>() * b.dtype.size();
        b.g[pooled].io_bytes = Bytes(trunk_out_bytes + rows * w * b.dtype.size());
        let mut x = pooled;
        let mut d_in = w;
        let dims = &model.head.mlp_dims;
        for (k, &d) in dims.iter().enumerate() {
            let d = d as u64;
            let last = k + 1 == dims.len();
            let shape = [rows, d, 1, 1];
            let params = vec![(format!("head.mlp.{k}.weight"), d * d_in), (format!("head.mlp.{k}.bias"), d)];
            let lin = b.layer(mlp_block, format!("head.mlp.{k}"), LayerKind::Linear { bias: true }, [rows, d_in, 1, 1], shape, params, Some(x), true, true);
            b.set_matmul_flops(lin, rows * d * d_in, true);
            if !last {
                // VISSL's swav_head: Linear, BatchNorm1d (use_bn), ReLU.
                let pre = if model.head.use_bn { b.bn(mlp_block, &format!("head.mlp.{k}.bn"), "", lin, true, true) } else { lin };
                x = b.layer(mlp_block, format!("head.mlp.{k}.relu"), LayerKind::Relu, shape, shape, vec![], Some(pre), true, false);
            } else {
                x = lin;
            }
            d_in = d;
        }
        // L2 normalise: keeps norms (rows) and the clamped norms (rows) in fp32-or-dtype.
        let norm = b.layer(mlp_block, "head.normalize".into(), LayerKind::Normalize, [rows, d_in, 1, 1], [rows, d_in, 1, 1], vec![], Some(x), true, true);
        b.g[norm].saved += Bytes(2 * rows * b.dtype.size());
        // The embedding is cast to fp32 before its normalisation (a new saved
        // storage unless already fp32); the prototypes run in fp32 on it.
        let k = model.head.prototypes as u64;
        let proto = b.layer(
            proto_block,
            "head.proto".into(),
            LayerKind::Linear { bias: false },
            [rows, d_in, 1, 1],
            [rows, k, 1, 1],
            vec![("head.proto.weight".into(), k * d_in)],
            Some(norm),
            true,
            false,
        );
        b.g[proto].dtype = DType::Fp32;
        b.g[proto].saved = if b.dtype == DType::Fp32 { Bytes::ZERO } else { Bytes(rows * d_in * 4) };
        b.g[proto].io_bytes = Bytes(rows * d_in * (b.dtype.size() + 4) + rows * k * 4);
        b.set_matmul_flops(proto, rows * k * d_in, true);

        b.finish(workload.clone())
    }

    /// Trunk blocks (stem + residual) in forward order.
    pub fn trunk_blocks(&self) -> impl Iterator<Item = &Block> {
        self.blocks.iter().filter(|b| b.is_trunk())
    }
    pub fn head_blocks(&self) -> impl Iterator<Item = &Block> {
        self.blocks.iter().filter(|b| !b.is_trunk())
    }
    pub fn trunk_params(&self) -> u64 {
        self.trunk_blocks().map(|b| b.params).sum()
    }
    pub fn head_params(&self) -> u64 {
        self.head_blocks().map(|b| b.params).sum()
    }
    pub fn trunk_fwd_flops(&self) -> Flops {
        self.trunk_blocks().map(|b| b.fwd_flops).sum()
    }
    pub fn trunk_saved(&self) -> Bytes {
        self.trunk_blocks().map(|b| b.saved).sum()
    }
    pub fn block(&self, name: &str) -> Option<&Block> {
        self.blocks.iter().find(|b| b.name == name)
    }
    /// The prototypes' Linear: its input is the embedding, its output the
    /// K prototype scores.
    pub fn prototype_layer(&self) -> Option<&Layer> {
        self.blocks.iter().find(|b| b.kind == BlockKind::HeadProto).and_then(|b| self.layers_of(b).last())
    }

    pub fn layers_of<'a>(&'a self, block: &'a Block) -> impl Iterator<Item = &'a Layer> + 'a {
        block.layers.iter().map(move |i| &self.graph[*i])
    }

    /// What a block's time depends on, as a short stable key: its kind and
    /// every layer's op, shapes and dtype (not names), hashed (FNV-1a, 64
    /// bit). Two blocks with equal keys run the same ops on the same shapes,
    /// in any model, so one measurement serves both.
    pub fn block_key(&self, block: &Block) -> String {
        let mut text = format!("{:?};", block.kind);
        for l in self.layers_of(block) {
            text.push_str(&format!("{:?}|{:?}|{:?}|{:?};", l.kind, l.in_shape, l.out_shape, l.dtype));
        }
        format!("{:016x}", crate::hash::fnv1a(text.as_bytes()))
    }
}

struct Builder {
    g: DiGraph<Layer, ()>,
    blocks: Vec<Block>,
    dtype: DType,
}

impl Builder {
    fn block(&mut self, name: &str, kind: BlockKind, stage: Option<usize>) -> usize {
        self.blocks.push(Block {
            name: name.to_string(),
            kind,
            stage,
            layers: Vec::new(),
            params: 0,
            fwd_flops: Flops(0.0),
            bwd_flops: Flops(0.0),
            saved: Bytes::ZERO,
            output: Bytes::ZERO,
            input: Bytes::ZERO,
            largest_activation: Bytes::ZERO,
            param_tensors: Vec::new(),
        });
        self.blocks.len() - 1
    }

    /// Adds a layer. `with_params` is false for the second and later crop
    /// groups (the same weights run again). `out_saved`: the output storage is
    /// kept for backward.
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &mut self,
        block: usize,
        name: String,
        kind: LayerKind,
        in_shape: Shape,
        out_shape: Shape,
        params: Vec<(String, u64)>,
        from: Option<NodeIndex>,
        with_params: bool,
        out_saved: bool,
    ) -> NodeIndex {
        let d = self.dtype.size();
        let out_bytes = numel(&out_shape) * d;
        let layer = Layer {
            name,
            block,
            kind,
            in_shape,
            out_shape,
            params: if with_params { params } else { Vec::new() },
            fwd_flops: Flops(0.0),
            bwd_flops: Flops(0.0),
            saved: if out_saved { Bytes(out_bytes) } else { Bytes::ZERO },
            io_bytes: Bytes(numel(&in_shape) * d + out_bytes),
            dtype: self.dtype,
        };
        let idx = self.g.add_node(layer);
        if let Some(f) = from {
            self.g.add_edge(f, idx, ());
        }
        self.blocks[block].layers.push(idx);
        idx
    }

    /// FLOPs of a conv/linear with `macs` multiply-adds: forward 2·MACs;
    /// backward 2·MACs for the weight gradient plus 2·MACs for the input
    /// gradient when the input needs one (not for the stem, whose input is data).
    fn set_matmul_flops(&mut self, idx: NodeIndex, macs: u64, input_grad: bool) {
        let f = 2.0 * macs as f64;
        self.g[idx].fwd_flops = Flops(f);
        self.g[idx].bwd_flops = Flops(if input_grad { 2.0 * f } else { f });
    }

    /// Conv from `src`'s output. Returns (conv node, conv node) for chaining.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        block: usize,
        lname: &str,
        sfx: &str,
        src: NodeIndex,
        cout: u64,
        k: u64,
        stride: u64,
        groups: u64,
        bias: bool,
        out_saved: bool,
        with_params: bool,
        input_grad: bool,
    ) -> (NodeIndex, NodeIndex) {
        let [n, cin, h, w] = self.g[src].out_shape;
        let pad = k / 2;
        let oh = (h + 2 * pad - k) / stride + 1;
        let ow = (w + 2 * pad - k) / stride + 1;
        let mut params = vec![(format!("{lname}.weight"), cout * (cin / groups) * k * k)];
        if bias {
            params.push((format!("{lname}.bias"), cout));
        }
        let idx = self.layer(
            block,
            format!("{lname}{sfx}"),
            LayerKind::Conv { kernel: k, stride, groups, bias },
            [n, cin, h, w],
            [n, cout, oh, ow],
            params,
            Some(src),
            with_params,
            out_saved,
        );
        self.set_matmul_flops(idx, n * cout * oh * ow * (cin / groups) * k * k, input_grad);
        (idx, idx)
    }

    /// BN (+ saved fp32 mean/invstd) on `src`; the output saved iff `out_saved`.
    fn bn(&mut self, block: usize, lname: &str, sfx: &str, src: NodeIndex, out_saved: bool, with_params: bool) -> NodeIndex {
        let shape = self.g[src].out_shape;
        let c = shape[1];
        let params = vec![(format!("{lname}.weight"), c), (format!("{lname}.bias"), c)];
        let idx = self.layer(block, format!("{lname}{sfx}"), LayerKind::BatchNorm, shape, shape, params, Some(src), with_params, out_saved);
        self.g[idx].saved += Bytes(2 * c * 4);
        idx
    }

    /// BN followed by in-place ReLU: ReLU's saved result is the BN output.
    fn bn_relu(&mut self, block: usize, lname: &str, sfx: &str, _conv: NodeIndex, src: NodeIndex, with_params: bool) -> NodeIndex {
        let bn = self.bn(block, lname, sfx, src, true, with_params);
        let shape = self.g[bn].out_shape;
        let r = self.layer(block, format!("{lname}.relu{sfx}"), LayerKind::Relu, shape, shape, vec![], Some(bn), with_params, false);
        // In place: no new storage, reads and writes the same tensor.
        r
    }

    fn res_block(&mut self, bi: usize, bs: &BlockSpec, sfx: &str, x: NodeIndex, first: bool) -> NodeIndex {
        let name = &bs.name;
        let (w_out, w_b, groups, stride, se_w) = (bs.w_out as u64, bs.w_b as u64, bs.groups as u64, bs.stride as u64, bs.se as u64);
        let p = |l: &str| format!("{name}.{l}");
        let shortcut = if bs.proj {
            let (pc, _) = self.conv(bi, &p("proj"), sfx, x, w_out, 1, stride, 1, false, true, first, true);
            self.bn(bi, &p("proj_bn"), sfx, pc, false, first)
        } else {
            x
        };
        let (a, _) = self.conv(bi, &p("a"), sfx, x, w_b, 1, 1, 1, false, true, first, true);
        let a = self.bn_relu(bi, &p("a_bn"), sfx, a, a, first);
        let (bconv, _) = self.conv(bi, &p("b"), sfx, a, w_b, 3, stride, groups, false, true, first, true);
        let bx = self.bn_relu(bi, &p("b_bn"), sfx, bconv, bconv, first);
        // Squeeze-excitation (RegNet-Y; RegNet-X has none: se_w = 0).
        let c_in = if se_w == 0 {
            bx
        } else {
            let [n, _, _, _] = self.g[bx].out_shape;
            let pool =
                self.layer(bi, format!("{}{sfx}", p("se.pool")), LayerKind::AvgPool, self.g[bx].out_shape, [n, w_b, 1, 1], vec![], Some(bx), first, true);
            let (red, _) = self.conv(bi, &p("se.reduce"), sfx, pool, se_w, 1, 1, 1, true, false, first, true);
            let relu = self.layer(bi, format!("{}{sfx}", p("se.relu")), LayerKind::Relu, [n, se_w, 1, 1], [n, se_w, 1, 1], vec![], Some(red), first, true);
            let (exp, _) = self.conv(bi, &p("se.expand"), sfx, relu, w_b, 1, 1, 1, true, false, first, true);
            let sig = self.layer(bi, format!("{}{sfx}", p("se.sigmoid")), LayerKind::Sigmoid, [n, w_b, 1, 1], [n, w_b, 1, 1], vec![], Some(exp), first, true);
            let mul =
                self.layer(bi, format!("{}{sfx}", p("se.mul")), LayerKind::Mul, self.g[bx].out_shape, self.g[bx].out_shape, vec![], Some(bx), first, true);
            self.g.add_edge(sig, mul, ());
            mul
        };
        let (c, _) = self.conv(bi, &p("c"), sfx, c_in, w_out, 1, 1, 1, false, true, first, true);
        let cbn = self.bn(bi, &p("c_bn"), sfx, c, false, first);
        let out_shape = self.g[cbn].out_shape;
        let add = self.layer(bi, format!("{}{sfx}", p("add")), LayerKind::Add, out_shape, out_shape, vec![], Some(cbn), first, true);
        self.g.add_edge(shortcut, add, ());
        // The add reads two tensors.
        self.g[add].io_bytes += Bytes(numel(&out_shape) * self.dtype.size());
        let relu = self.layer(bi, format!("{}{sfx}", p("relu")), LayerKind::Relu, out_shape, out_shape, vec![], Some(add), first, false);
        relu
    }

    fn finish(mut self, workload: Workload) -> ModelGraph {
        for bi in 0..self.blocks.len() {
            let layers = self.blocks[bi].layers.clone();
            let mut blk = std::mem::take(&mut self.blocks[bi].param_tensors);
            let (mut params, mut fwd, mut bwd, mut saved, mut largest) = (0, Flops(0.0), Flops(0.0), Bytes::ZERO, Bytes::ZERO);
            for &i in &layers {
                let l = &self.g[i];
                params += l.param_count();
                blk.extend(l.params.iter().cloned());
                fwd += l.fwd_flops;
                bwd += l.bwd_flops;
                saved += l.saved;
                largest = largest.max(Bytes(numel(&l.out_shape) * l.dtype.size()));
            }
            // Inputs: sum over edges entering the block from outside it;
            // outputs: over edges leaving it (one per crop group for trunk blocks).
            let (mut input, mut output) = (Bytes::ZERO, Bytes::ZERO);
            let mut sources = Vec::new();
            for &i in &layers {
                for e in self.g.edges_directed(i, petgraph::Direction::Incoming) {
                    use petgraph::visit::EdgeRef;
                    // A tensor read by several layers (conv `a` and the shortcut) counts once.
                    if self.g[e.source()].block != bi && !sources.contains(&e.source()) {
                        sources.push(e.source());
                        let src = &self.g[e.source()];
                        input += Bytes(numel(&src.out_shape) * src.dtype.size());
                    }
                }
                let l = &self.g[i];
                let leaves = self.g.edges_directed(i, petgraph::Direction::Outgoing).any(|e| {
                    use petgraph::visit::EdgeRef;
                    self.g[e.target()].block != bi
                });
                if leaves || (bi + 1 == self.blocks.len() && self.g.edges_directed(i, petgraph::Direction::Outgoing).next().is_none()) {
                    output += Bytes(numel(&l.out_shape) * l.dtype.size());
                }
            }
            // The stem's "input" is the image batch, which is a layer of the stem itself.
            if self.blocks[bi].kind == BlockKind::Stem {
                input =
                    layers.iter().filter(|&&i| self.g[i].kind == LayerKind::Input).map(|&i| Bytes(numel(&self.g[i].out_shape) * self.g[i].dtype.size())).sum();
            }
            let b = &mut self.blocks[bi];
            b.params = params;
            b.param_tensors = blk;
            b.fwd_flops = fwd;
            b.bwd_flops = bwd;
            b.saved = saved;
            b.largest_activation = largest;
            b.input = input;
            b.output = output;
        }
        ModelGraph { graph: self.g, blocks: self.blocks, workload }
    }
}

/// Whether parameter `name` is a BatchNorm's affine weight or bias (its
/// layer is `*.bn` or `*_bn`: `stem.bn`, `s1.b0.a_bn`, `head.mlp.0.bn`).
/// FSDP gathers these in fp32 whatever the compute dtype, as VISSL keeps
/// every BN layer its own fp32 unit.
pub fn is_batch_norm_param(name: &str) -> bool {
    let layer = name.strip_suffix(".weight").or_else(|| name.strip_suffix(".bias"));
    layer.is_some_and(|l| l.ends_with(".bn") || l.ends_with("_bn"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str) -> ModelConfig {
        ModelConfig::load(name).unwrap()
    }

    /// The executed graph differs only in the SE layers' kind: same FLOPs,
    /// parameters, saved bytes and shapes.
    #[test]
    fn the_executed_graph_runs_squeeze_excitation_as_matmuls() {
        let m = ModelConfig::load("regnety-400mf").unwrap();
        let w = Workload::single(4, 64, DType::Bf16);
        let (conv, exec) = (ModelGraph::build(&m, &w), ModelGraph::build_executed(&m, &w, ChannelPadding::Off));
        let mut changed = 0;
        for (a, b) in conv.graph.node_weights().zip(exec.graph.node_weights()) {
            assert_eq!((&a.name, a.fwd_flops, a.saved, &a.params, a.out_shape), (&b.name, b.fwd_flops, b.saved, &b.params, b.out_shape));
            if a.kind != b.kind {
                assert!(a.name.contains(".se."), "{}", a.name);
                assert_eq!(b.kind, LayerKind::Linear { bias: true });
                changed += 1;
            }
        }
        // Two per block, 16 blocks.
        assert_eq!(changed, 32);
    }

    #[test]
    fn regnety_400mf_params_and_flops_match_torchvision() {
        let g = ModelGraph::build(&load("regnety-400mf"), &Workload::single(1, 224, DType::Fp32));
        assert_eq!(g.trunk_params(), 3_903_144);
        let macs = g.trunk_fwd_flops().0 / 2.0;
        // torchvision publishes 0.40 GFLOPS (multiply-adds, fc included: 0.44 M).
        let rel = (macs + 440_000.0) / 0.40e9 - 1.0;
        assert!(rel.abs() < 0.01, "MACs {macs} rel {rel}");
    }

    #[test]
    fn the_head_bn_is_a_batch_norm_layer_after_each_hidden_linear() {
        let m = load("regnety-400mf");
        assert!(m.head.use_bn);
        let g = ModelGraph::build(&m, &Workload::single(2, 64, DType::Fp32));
        let head = g.blocks.iter().find(|b| b.kind == BlockKind::HeadMlp).unwrap();
        let bns: Vec<&str> = g.layers_of(head).filter(|l| l.kind == LayerKind::BatchNorm).map(|l| l.name.as_str()).collect();
        assert_eq!(bns, ["head.mlp.0.bn"]);
        let mut plain = m.clone();
        plain.head.use_bn = false;
        let p = ModelGraph::build(&plain, &Workload::single(2, 64, DType::Fp32));
        let head_params = |g: &ModelGraph| g.blocks.iter().find(|b| b.kind == BlockKind::HeadMlp).unwrap().params;
        assert_eq!(head_params(&g) - head_params(&p), 2 * 2048);
    }

    #[test]
    fn regnety_16gf_params_and_flops_match_torchvision() {
        let g = ModelGraph::build(&load("regnety-16gf"), &Workload::single(1, 224, DType::Fp32));
        assert_eq!(g.trunk_params(), 80_565_140);
        let macs = g.trunk_fwd_flops().0 / 2.0;
        let rel = (macs + 3_024_000.0) / 15.91e9 - 1.0;
        assert!(rel.abs() < 0.01, "MACs {macs} rel {rel}");
    }

    #[test]
    fn block_names_are_stable_and_ordered() {
        let g = ModelGraph::build(&load("regnety-tiny"), &Workload::single(2, 32, DType::Fp32));
        let names: Vec<&str> = g.blocks.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["stem", "s1.b0", "s2.b0", "s3.b0", "s3.b1", "s4.b0", "head.mlp", "head.proto"]);
        assert!(petgraph::algo::toposort(&g.graph, None).is_ok());
    }

    #[test]
    fn saved_bytes_of_an_identity_block_follow_the_storage_rule() {
        // s3.b1 of regnety-tiny: 32 -> 32 channels, stride 1, no projection.
        let n = 2;
        let g = ModelGraph::build(&load("regnety-tiny"), &Workload::single(n, 32, DType::Fp32));
        let b = g.block("s3.b1").unwrap();
        let hw = 2 * 2; // 32 px: stem /2, s1 /2, s2 /2, s3 /2 -> 2x2
        let full = n * 32 * hw * 4;
        let se = (0.25f64 * 32.0).round() as u64;
        // conv a out, bn a out, conv b out, bn b out, mul out, conv c out, add out
        // + BN stats (3 BNs) + pooled + se relu + sigmoid.
        let expect = 7 * full + 3 * 2 * 32 * 4 + (n * 32 + n * se + n * 32) * 4;
        assert_eq!(b.saved.0, expect);
        assert_eq!(b.output.0, full);
        assert_eq!(b.input.0, full);
    }

    #[test]
    fn multicrop_sums_groups_and_keeps_params_once() {
        let m = load("regnety-tiny");
        let one = ModelGraph::build(&m, &Workload::single(4, 32, DType::Fp32));
        let mc = ModelGraph::build(
            &m,
            &Workload { images: 2, crops: vec![CropGroup { count: 2, resolution: 32 }, CropGroup { count: 2, resolution: 16 }], dtype: DType::Fp32 },
        );
        let small = ModelGraph::build(&m, &Workload::single(4, 16, DType::Fp32));
        assert_eq!(one.trunk_params(), mc.trunk_params());
        // 2 images x 2 crops of each size = 4 crops at 32 px + 4 crops at 16 px.
        assert!((mc.trunk_fwd_flops().0 - (one.trunk_fwd_flops().0 + small.trunk_fwd_flops().0)).abs() < 1.0);
        assert_eq!(mc.trunk_saved(), one.trunk_saved() + small.trunk_saved());
        assert_eq!(mc.workload.total_crops(), 8);
        let half = ModelGraph::build(&m, &Workload::single(4, 32, DType::Bf16));
        assert!(half.trunk_saved().0 * 2 > one.trunk_saved().0 - 4096 && half.trunk_saved() < one.trunk_saved());
    }
}
