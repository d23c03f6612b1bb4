//! The parameters of a network config: every tensor's name (burn's module path) and shape,
//! walked without burn, and the check that a weights pack (`crate::pack`) holds exactly them.
//! The one list of names the burn module, the weights pack and the micro runtime share.

use alloc::string::String;
use alloc::vec::Vec;

use super::NetConfig;
use crate::pack::{PackError, PackView};

impl NetConfig {
    /// Every parameter tensor of the network as (burn's path, shape), in burn's module
    /// order: the names a weights pack holds (`crate::pack`). A test holds it to the
    /// parameters of the burn module. Call [`NetConfig::validate`] first.
    pub fn parameters(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        self.visit_parameters(&mut |name, shape| out.push((name.into(), shape.to_vec())));
        out
    }

    /// [`NetConfig::parameters`] one at a time, without holding the list (what a
    /// microcontroller checks a weights pack against).
    pub fn visit_parameters(&self, f: &mut dyn FnMut(&str, &[usize])) {
        // Out-of-line helpers with plain string pushes: a format! per name inlined at every
        // call site made this function 40 KB of a microcontroller's flash.
        const LINEAR: [&str; 2] = ["weight", "bias"];
        const NORM: [&str; 2] = ["gamma", "beta"];
        let linear = |f: &mut dyn FnMut(&str, &[usize]), p: &str, name: &str, i, o| {
            layer(f, p, name, LINEAR, [&[i, o], &[o]]);
        };
        let conv = |f: &mut dyn FnMut(&str, &[usize]), p: &str, name: &str, i, o, k| {
            layer(f, p, name, LINEAR, [&[o, i, k, k], &[o]]);
        };
        let norm = |f: &mut dyn FnMut(&str, &[usize]), p: &str, name: &str, c| {
            layer(f, p, name, NORM, [&[c], &[c]]);
        };
        match self {
            NetConfig::UNet(c) => {
                let noise = c.model_channels * c.channel_mult_noise;
                let emb = c.model_channels * c.channel_mult_emb;
                let p = "UNet.";
                if c.label_dim > 0 {
                    linear(f, p, "map_label", c.label_dim, noise);
                }
                linear(f, p, "map_layer0", noise, emb);
                linear(f, p, "map_layer1", emb, emb);
                conv(f, p, "conv_in", c.in_channels, c.model_channels, 3);
                let (enc, dec, head) = c.topology();
                for (part, blocks) in [("enc", &enc), ("dec", &dec)] {
                    for (i, b) in blocks.iter().enumerate() {
                        let p = &alloc::format!("UNet.{part}.{i}.");
                        norm(f, p, "norm0", b.cin);
                        conv(f, p, "conv0", b.cin, b.cout, 3);
                        linear(f, p, "affine", emb, b.cout);
                        norm(f, p, "norm1", b.cout);
                        conv(f, p, "conv1", b.cout, b.cout, 3);
                        if b.has_skip() {
                            conv(f, p, "skip", b.cin, b.cout, 1);
                        }
                        if b.attention {
                            norm(f, p, "norm2", b.cout);
                            conv(f, p, "qkv", b.cout, 3 * b.cout, 1);
                            conv(f, p, "proj", b.cout, b.cout, 1);
                        }
                    }
                }
                norm(f, p, "aux_norm", head);
                conv(f, p, "aux_conv", head, c.out_channels, 3);
            }
            NetConfig::Mlp(c) => {
                let p = "Mlp.";
                if c.label_dim > 0 {
                    linear(f, p, "map_label", c.label_dim, c.noise_channels);
                }
                linear(f, p, "map_layer0", c.noise_channels, c.hidden);
                linear(f, p, "input", c.dim, c.hidden);
                for i in 0..c.depth {
                    linear(f, p, &alloc::format!("blocks.{i}"), c.hidden, c.hidden);
                }
                linear(f, p, "output", c.hidden, c.dim);
            }
        }
    }

    /// Checks `pack` holds exactly this network's parameters (name and shape), in any
    /// order: what `crate::micro` and the host loader require before reading anything.
    /// The error lists the first missing, extra or misshapen tensors.
    pub fn check_pack(&self, pack: &PackView<'_>) -> Result<(), PackError> {
        let mut problems: Vec<String> = Vec::new();
        let mut expected = 0usize;
        self.visit_parameters(&mut |name, shape| {
            expected += 1;
            let problem = match pack.get(name) {
                None => alloc::format!("'{name}' is missing"),
                Some(t) if t.shape() != shape => alloc::format!(
                    "'{name}' has shape {:?}, the config needs {shape:?}",
                    t.shape()
                ),
                Some(_) => return,
            };
            if problems.len() < 8 {
                problems.push(problem);
            }
        });
        // Names are unique (checked by parse): with every expected one present, any
        // surplus is a tensor the network does not have.
        if problems.is_empty() && pack.tensors().len() > expected {
            let mut seen = Vec::new();
            self.visit_parameters(&mut |name, _| seen.push(String::from(name)));
            for t in pack.tensors() {
                if !seen.iter().any(|n| n == t.name) && problems.len() < 8 {
                    problems.push(alloc::format!(
                        "'{}' is not a parameter of this network",
                        t.name
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(PackError(alloc::format!(
                "the weights do not match the network config: {}",
                problems.join("; ")
            )))
        }
    }
}

/// Visits the two tensors of one layer, `{prefix}{layer}.{field}`, with their shapes.
#[inline(never)]
fn layer(
    f: &mut dyn FnMut(&str, &[usize]),
    prefix: &str,
    layer: &str,
    fields: [&str; 2],
    shapes: [&[usize]; 2],
) {
    let mut name = String::with_capacity(prefix.len() + layer.len() + 8);
    for (field, shape) in fields.iter().zip(shapes) {
        name.clear();
        name.push_str(prefix);
        name.push_str(layer);
        name.push('.');
        name.push_str(field);
        f(&name, shape);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MlpConfig;
    use crate::pack::{PackTensor, WeightDtype, encode};

    #[test]
    fn check_pack_lists_the_problems() {
        // A real network's parameters, one misshapen, one missing, one extra.
        let config = NetConfig::Mlp(
            MlpConfig::new(3)
                .with_hidden(4)
                .with_depth(1)
                .with_noise_channels(4),
        );
        let mut params: Vec<PackTensor> = config
            .parameters()
            .into_iter()
            .map(|(name, shape)| PackTensor {
                values: alloc::vec![0.5; shape.iter().product()],
                name,
                shape,
            })
            .collect();
        let good = encode(&params, WeightDtype::I8).unwrap();
        config.check_pack(&PackView::parse(&good).unwrap()).unwrap();
        params[0].shape = alloc::vec![2, 8];
        params.pop();
        params.push(PackTensor {
            name: "Mlp.extra.weight".into(),
            shape: alloc::vec![1],
            values: alloc::vec![0.0],
        });
        let bytes = encode(&params, WeightDtype::F32).unwrap();
        let err = config
            .check_pack(&PackView::parse(&bytes).unwrap())
            .unwrap_err()
            .0;
        assert!(
            err.contains("'Mlp.map_layer0.weight' has shape [2, 8]"),
            "{err}"
        );
        assert!(err.contains("'Mlp.output.bias' is missing"), "{err}");
        // With every parameter present, a surplus tensor is named.
        params[0].shape = alloc::vec![4, 4];
        params.pop();
        params.push(PackTensor {
            name: "Mlp.output.bias".into(),
            shape: alloc::vec![3],
            values: alloc::vec![0.0; 3],
        });
        params.push(PackTensor {
            name: "Mlp.extra.weight".into(),
            shape: alloc::vec![1],
            values: alloc::vec![0.0],
        });
        let bytes = encode(&params, WeightDtype::F32).unwrap();
        let err = config
            .check_pack(&PackView::parse(&bytes).unwrap())
            .unwrap_err()
            .0;
        assert!(
            err.contains("'Mlp.extra.weight' is not a parameter"),
            "{err}"
        );
    }
}
