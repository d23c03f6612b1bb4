//! The wiring of Inception-v3 as FID uses it, written once as data: which convolution feeds
//! which, block by block, with the TensorFlow graph's layer names. The host executor and the
//! burn modules both walk it.

/// One step of a branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Convolution `i` of [`Architecture::convs`] (BatchNorm folded in), then ReLU.
    Conv(usize),
    /// 3x3 max pooling.
    MaxPool { stride: usize, pad: usize },
    /// 3x3 average pooling, stride 1, padding 1, padding left out of the average.
    AvgPool,
}

/// A chain of ops from the block's input (or a shared intermediate) to either a slot of the
/// block's channel concatenation or a shared intermediate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Branch {
    /// `None`: the block's input; `Some(i)`: intermediate `i`.
    pub from: Option<usize>,
    /// The ops, in order.
    pub ops: Vec<Op>,
    /// `None`: appended to the concatenation; `Some(i)`: becomes intermediate `i`.
    pub to: Option<usize>,
}

/// One convolution's name in the weights file and its geometry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// Module path below the TensorFlow graph's `net.layers.`, e.g. `mixed_4.tower.conv_1`.
    pub name: String,
    /// `(stride, (pad_h, pad_w))`, read from the file's metadata.
    pub stride: usize,
    pub pad: (usize, usize),
}

/// The network: its convolutions and its blocks (each a list of branches whose outputs are
/// concatenated along channels, in order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Architecture {
    /// Convolution names, in the order [`Op::Conv`] indexes them.
    pub convs: Vec<String>,
    /// The stem and the eleven mixed blocks.
    pub blocks: Vec<Vec<Branch>>,
}

impl Architecture {
    fn conv(&mut self, name: String) -> Op {
        self.convs.push(name);
        Op::Conv(self.convs.len() - 1)
    }

    fn chain(&mut self, prefix: &str, names: &[&str]) -> Vec<Op> {
        names
            .iter()
            .map(|n| self.conv(format!("{prefix}.{n}")))
            .collect()
    }
}

fn out(ops: Vec<Op>) -> Branch {
    Branch {
        from: None,
        ops,
        to: None,
    }
}

/// Inception-v3 as pytorch-fid's `FIDInceptionA/C/E` and torchvision's `InceptionB/D` wire
/// it, with the TensorFlow graph's layer names.
pub fn architecture() -> Architecture {
    let mut a = Architecture {
        convs: vec![],
        blocks: vec![],
    };
    let max2 = Op::MaxPool { stride: 2, pad: 0 };
    // The stem: 299 -> 149 -> 147 -> 147 -> 73 -> 73 -> 71 -> 35.
    let mut stem = vec![];
    for n in ["conv", "conv_1", "conv_2"] {
        stem.push(a.conv(n.into()));
    }
    stem.push(max2);
    for n in ["conv_3", "conv_4"] {
        stem.push(a.conv(n.into()));
    }
    stem.push(max2);
    a.blocks.push(vec![out(stem)]);
    // 35x35: InceptionA, concatenation [1x1, 5x5, 3x3 double, pool].
    for m in ["mixed", "mixed_1", "mixed_2"] {
        let b = vec![
            out(a.chain(m, &["conv"])),
            out(a.chain(m, &["tower.conv", "tower.conv_1"])),
            out(a.chain(m, &["tower_1.conv", "tower_1.conv_1", "tower_1.conv_2"])),
            out([vec![Op::AvgPool], a.chain(m, &["tower_2.conv"])].concat()),
        ];
        a.blocks.push(b);
    }
    // 35 -> 17: InceptionB, [3x3 stride 2, 3x3 double, max pool].
    let b = vec![
        out(a.chain("mixed_3", &["conv"])),
        out(a.chain("mixed_3", &["tower.conv", "tower.conv_1", "tower.conv_2"])),
        out(vec![max2]),
    ];
    a.blocks.push(b);
    // 17x17: InceptionC, [1x1, 7x7, 7x7 double, pool].
    for m in ["mixed_4", "mixed_5", "mixed_6", "mixed_7"] {
        let b = vec![
            out(a.chain(m, &["conv"])),
            out(a.chain(m, &["tower.conv", "tower.conv_1", "tower.conv_2"])),
            out(a.chain(
                m,
                &[
                    "tower_1.conv",
                    "tower_1.conv_1",
                    "tower_1.conv_2",
                    "tower_1.conv_3",
                    "tower_1.conv_4",
                ],
            )),
            out([vec![Op::AvgPool], a.chain(m, &["tower_2.conv"])].concat()),
        ];
        a.blocks.push(b);
    }
    // 17 -> 8: InceptionD, [3x3, 7x7x3, max pool].
    let b = vec![
        out(a.chain("mixed_8", &["tower.conv", "tower.conv_1"])),
        out(a.chain(
            "mixed_8",
            &[
                "tower_1.conv",
                "tower_1.conv_1",
                "tower_1.conv_2",
                "tower_1.conv_3",
            ],
        )),
        out(vec![max2]),
    ];
    a.blocks.push(b);
    // 8x8: InceptionE, [1x1, 3x3 split in 1x3 and 3x1, 3x3 double split likewise, pool].
    // pytorch-fid's FIDInceptionE_1 averages (padding left out), FIDInceptionE_2 takes the max.
    for (m, pool) in [
        ("mixed_9", Op::AvgPool),
        ("mixed_10", Op::MaxPool { stride: 1, pad: 1 }),
    ] {
        let split = |a: &mut Architecture, from: usize, names: [&str; 2]| {
            names.map(|n| Branch {
                from: Some(from),
                ops: a.chain(m, &[n]),
                to: None,
            })
        };
        let mut b = vec![out(a.chain(m, &["conv"]))];
        b.push(Branch {
            from: None,
            ops: a.chain(m, &["tower_conv"]),
            to: Some(0),
        });
        b.extend(split(&mut a, 0, ["tower_mixed_conv", "tower_mixed_conv_1"]));
        b.push(Branch {
            from: None,
            ops: a.chain(m, &["tower_1_conv", "tower_1_conv_1"]),
            to: Some(1),
        });
        b.extend(split(
            &mut a,
            1,
            ["tower_1_mixed_conv", "tower_1_mixed_conv_1"],
        ));
        b.push(out([vec![pool], a.chain(m, &["tower_2_conv"])].concat()));
        a.blocks.push(b);
    }
    a
}
