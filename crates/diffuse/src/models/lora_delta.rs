//! The weight change a LoRA module makes, in f32, with the module's own scale applied (the user's weight is
//! applied by the caller): kohya's and PEFT's `up · down · alpha / rank`, LoCon's Tucker form, LyCORIS's LoHa
//! (`(w1a · w1b) ⊙ (w2a · w2b)`) and LoKr (`w1 ⊗ w2`), and full differences — the formulas LyCORIS documents
//! and AUTOMATIC1111 applies.

use candle_core::Tensor;

use crate::loaders::lora::keys::{Factor, Kind, Module, Scale};
use crate::{Error, Result};

/// A module's change to its layer.
pub(crate) struct Delta {
    /// Added to the layer's weight (same shape).
    pub weight: Tensor,
    /// Added to the layer's bias, where the module changes it.
    pub bias: Option<Tensor>,
}

/// The delta `module` makes to a layer whose weight has shape `target`, times `multiplier` (the user's weight),
/// its tensors read by `get` (in f32); `file` names the LoRA file in errors. The scales multiply the smallest
/// tensor of each product, so that a delta the size of the layer is made once.
pub(crate) fn delta(
    file: &str,
    module: &Module,
    target: &[usize],
    multiplier: f64,
    get: &dyn Fn(&str) -> Result<Tensor>,
) -> Result<Delta> {
    let shape_error = |found: &[usize]| Error::Weights {
        file: file.to_string(),
        tensor: module.key.clone(),
        message: format!(
            "its delta has shape {found:?} ({} values) but the layer it names has shape {target:?}",
            found.iter().product::<usize>()
        ),
    };
    let fail = |e: candle_core::Error| Error::Weights {
        file: file.to_string(),
        tensor: module.key.clone(),
        message: format!("its tensors do not combine: {e}"),
    };
    // The module's own scale: `alpha / rank` (kohya, LyCORIS), or PEFT's, known already.
    let scale = |rank: Option<usize>| -> f64 {
        let own = match module.scale {
            Scale::Fixed(s) => s,
            Scale::Alpha(Some(alpha)) => match rank {
                Some(r) if r > 0 => alpha / r as f64,
                _ => 1.0,
            },
            Scale::Alpha(None) => 1.0,
        };
        own * multiplier
    };
    let (raw, bias) = match &module.kind {
        Kind::LowRank {
            down,
            up,
            mid,
            bias,
        } => {
            let (down, up) = (get(down)?, get(up)?);
            let factor = scale(down.dims().first().copied());
            let up2 = (up.flatten_from(1).map_err(fail)? * factor).map_err(fail)?;
            let down2 = down.flatten_from(1).map_err(fail)?;
            let weight = match mid {
                Some(mid) => tucker(&get(mid)?, &up2.t().map_err(fail)?, &down2),
                None => up2.matmul(&down2),
            }
            .map_err(fail)?;
            let bias = match bias {
                Some(b) => Some((get(b)? * factor).map_err(fail)?),
                None => None,
            };
            (weight, bias)
        }
        Kind::LoHa {
            w1a,
            w1b,
            w2a,
            w2b,
            t1,
            t2,
        } => {
            let (w1a, w1b, w2a, w2b) = (get(w1a)?, get(w1b)?, get(w2a)?, get(w2b)?);
            let factor = scale(w1b.dims().first().copied());
            let w1a = (w1a * factor).map_err(fail)?;
            let product = |a: &Tensor, b: &Tensor, t: &Option<String>| -> Result<Tensor> {
                match t {
                    Some(t) => tucker(&get(t)?, a, b).map_err(fail),
                    None => a.matmul(&b.flatten_from(1).map_err(fail)?).map_err(fail),
                }
            };
            let (w1, w2) = (product(&w1a, &w1b, t1)?, product(&w2a, &w2b, t2)?);
            if w1.dims() != w2.dims() {
                return Err(shape_error(w2.dims()));
            }
            ((w1 * w2).map_err(fail)?, None)
        }
        Kind::LoKr { w1, w2, t2 } => {
            let load = |f: &Factor| -> Result<(Tensor, Option<Tensor>)> {
                match f {
                    Factor::Whole(w) => Ok((get(w)?, None)),
                    Factor::Product(a, b) => Ok((get(a)?, Some(get(b)?))),
                }
            };
            let ((w1a, w1b), (w2a, w2b)) = (load(w1)?, load(w2)?);
            // The rank is the decomposed factor's (w1's when both are).
            let rank = w1b
                .as_ref()
                .or(w2b.as_ref())
                .and_then(|b| b.dims().first().copied());
            let w1a = (w1a * scale(rank)).map_err(fail)?;
            let w1 = match &w1b {
                Some(b) => w1a
                    .matmul(&b.flatten_from(1).map_err(fail)?)
                    .map_err(fail)?,
                None => w1a,
            };
            let w2 = match (&w2b, t2) {
                (None, _) => w2a,
                (Some(b), Some(t)) => tucker(&get(t)?, &w2a, b).map_err(fail)?,
                (Some(b), None) => w2a
                    .matmul(&b.flatten_from(1).map_err(fail)?)
                    .map_err(fail)?,
            };
            (kron(&w1, &w2).map_err(fail)?, None)
        }
        Kind::Full { diff, bias } => {
            let factor = scale(None);
            let bias = match bias {
                Some(b) => Some((get(b)? * factor).map_err(fail)?),
                None => None,
            };
            ((get(diff)? * factor).map_err(fail)?, bias)
        }
    };
    if raw.elem_count() != target.iter().product::<usize>() {
        return Err(shape_error(raw.dims()));
    }
    let weight = raw.reshape(target).map_err(fail)?;
    let outputs = target.first().copied().unwrap_or(0);
    let bias = match bias {
        Some(b) if b.elem_count() != outputs => {
            return Err(Error::Weights {
                file: file.to_string(),
                tensor: module.key.clone(),
                message: format!(
                    "its bias delta has shape {:?} but the layer has {outputs} outputs",
                    b.dims()
                ),
            })
        }
        Some(b) => Some(b.flatten_all().map_err(fail)?),
        None => None,
    };
    Ok(Delta { weight, bias })
}

/// `Σᵢⱼ t[i, j, k, l] · a[i, p] · b[j, q]` → `[p, q, k, l]`: a Tucker core `t` `[r1, r2, k, l]` expanded by
/// `a` `[r1, p]` and `b` `[r2, q]`.
fn tucker(t: &Tensor, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let (r1, r2, k, l) = t.dims4()?;
    let a = a.flatten_from(1)?;
    let b = b.flatten_from(1)?;
    let (p, q) = (a.dim(1)?, b.dim(1)?);
    let core = t
        .reshape((r1, r2, k * l))?
        .permute((2, 0, 1))?
        .contiguous()?;
    let left = a
        .t()?
        .contiguous()?
        .unsqueeze(0)?
        .broadcast_as((k * l, p, r1))?
        .contiguous()?
        .matmul(&core)?;
    let both = left.matmul(&b.unsqueeze(0)?.broadcast_as((k * l, r2, q))?.contiguous()?)?;
    both.permute((1, 2, 0))?.reshape((p, q, k, l))
}

/// The Kronecker product of `w1` `[a, b]` and `w2` `[c, d, …]` (flattened to `[c, m]`): `[a·c, b·m]`.
fn kron(w1: &Tensor, w2: &Tensor) -> candle_core::Result<Tensor> {
    let w1 = w1.flatten_from(1)?;
    let w2 = w2.flatten_from(1)?;
    let ((a, b), (c, m)) = (w1.dims2()?, w2.dims2()?);
    let left = w1.reshape((a, 1, b, 1))?;
    let right = w2.reshape((1, c, 1, m))?;
    left.broadcast_mul(&right)?.reshape((a * c, b * m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn kron_matches_its_definition() {
        let dev = Device::Cpu;
        let w1 = Tensor::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap();
        let w2 = Tensor::new(&[[0f32, 1.], [1., 0.]], &dev).unwrap();
        let k = kron(&w1, &w2).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(
            k,
            vec![
                vec![0., 1., 0., 2.],
                vec![1., 0., 2., 0.],
                vec![0., 3., 0., 4.],
                vec![3., 0., 4., 0.]
            ]
        );
    }

    #[test]
    fn tucker_matches_its_definition() {
        let dev = Device::Cpu;
        let t = Tensor::arange(0f32, 8., &dev)
            .unwrap()
            .reshape((2, 2, 2, 1))
            .unwrap();
        let a = Tensor::new(&[[1f32, 0., 2.], [0., 1., 1.]], &dev).unwrap();
        let b = Tensor::new(&[[1f32, 1.], [2., -1.]], &dev).unwrap();
        let got = tucker(&t, &a, &b).unwrap();
        assert_eq!(got.dims(), &[3, 2, 2, 1]);
        let (tv, av, bv) = (
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            a.to_vec2::<f32>().unwrap(),
            b.to_vec2::<f32>().unwrap(),
        );
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for p in 0..3 {
            for q in 0..2 {
                for k in 0..2 {
                    let mut sum = 0.0;
                    for i in 0..2 {
                        for j in 0..2 {
                            sum += tv[(i * 2 + j) * 2 + k] * av[i][p] * bv[j][q];
                        }
                    }
                    assert_eq!(got[(p * 2 + q) * 2 + k], sum);
                }
            }
        }
    }
}
