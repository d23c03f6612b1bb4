//! Training data: image folders (PNG/JPEG, grayscale or RGB, optional resize, labels from
//! sub-folder names) and samples of an analytic Gaussian mixture, scaled to [-1, 1] and
//! served in batches whose order depends only on the seed and the step (so a resumed run
//! sees exactly the batches an uninterrupted one would).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use sampler_core::bundle::ImageShape;
use sampler_core::gmm::Mixture;
use sampler_core::rng;

/// Why a data set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// I/O on a path.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An image that does not decode.
    #[error("{path}: not a readable PNG/JPEG image ({reason}); remove it or pass --skip-bad")]
    BadImage {
        /// The file.
        path: PathBuf,
        /// Decoder message.
        reason: String,
    },
    /// An image whose size differs from the first one.
    #[error(
        "{path}: image is {got_w}x{got_h} but the data set is {want_w}x{want_h}; pass --resize N or --skip-bad"
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Its width.
        got_w: u32,
        /// Its height.
        got_h: u32,
        /// Expected width.
        want_w: u32,
        /// Expected height.
        want_h: u32,
    },
    /// Nothing usable.
    /// `--labels` with an image that is in no class folder.
    #[error(
        "{path} is directly in {root}, in no class folder; with --labels every image must be in a \
         sub-folder named after its class"
    )]
    Unlabelled {
        /// The image.
        path: PathBuf,
        /// The data folder.
        root: PathBuf,
    },
    #[error("no images found under {0} (looked for .png, .jpg, .jpeg)")]
    Empty(PathBuf),
    /// A `.fsd` file that is not one, or is damaged.
    #[error("{path}: {reason}; regenerate it with `python3 data/fetch_data.py`")]
    BadRaw {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A name that is neither a shipped data set nor an existing path.
    #[error(
        "unknown data set '{0}': use mnist, mnist-test, faces, digits, cifar10, cifar10-test (after `python3 data/fetch_data.py cifar10`), a .fsd(.gz) file or an image folder"
    )]
    Unknown(String),
}

/// Magic of the raw data format written by `data/fetch_data.py`.
const FSD_MAGIC: &[u8; 8] = b"FSDATA1\0";

/// The file of a shipped data set (`mnist`, `mnist-test`, `faces`, `digits`, and the fetched
/// `cifar10`, `cifar10-test`), looked up in
/// `./data/` and then in the repository's `data/`.
pub fn shipped_path(name: &str) -> Option<PathBuf> {
    let file = match name {
        "mnist" | "mnist-train" => "mnist-train.fsd.gz",
        "mnist-test" => "mnist-test.fsd.gz",
        "faces" => "faces.fsd.gz",
        "digits" => "digits.fsd.gz",
        // Fetched, not shipped: `python3 data/fetch_data.py cifar10`.
        "cifar10" | "cifar10-train" => "cifar10-train.fsd.gz",
        "cifar10-test" => "cifar10-test.fsd.gz",
        _ => return None,
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("data")
        .join(file);
    [Path::new("data").join(file), repo]
        .into_iter()
        .find(|p| p.exists())
}

/// Resizes `n` channels-first u8 images to `size x size` (Lanczos).
fn resize_u8(px: &[u8], n: usize, c: usize, h: usize, w: usize, size: u32) -> Vec<u8> {
    use image::imageops::{FilterType, resize};
    let mut out = Vec::with_capacity(n * c * (size * size) as usize);
    for img in px.chunks(c * h * w) {
        for ch in img.chunks(h * w) {
            let gray =
                image::GrayImage::from_raw(w as u32, h as u32, ch.to_vec()).expect("sizes agree");
            out.extend_from_slice(resize(&gray, size, size, FilterType::Lanczos3).as_raw());
        }
    }
    out
}

/// A data set in memory: `n` images of `shape`, values in [-1, 1], optional labels.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Shape of one image (or `1 x 1 x d` for vector data).
    pub shape: ImageShape,
    /// `n * d` values, image after image, channels first.
    pub values: Vec<f32>,
    /// One label per image, when the data set is labelled.
    pub labels: Option<Vec<u32>>,
    /// Number of classes (0 when unlabelled).
    pub label_count: u32,
    /// Human-readable name for provenance.
    pub name: String,
    /// Files skipped with --skip-bad.
    pub skipped: usize,
}

/// Options for [`Dataset::from_folder`].
#[derive(Clone, Debug, Default)]
pub struct FolderOptions {
    /// Resize every image to `N x N` (Lanczos).
    pub resize: Option<u32>,
    /// Take class labels from the first-level sub-folder names (sorted).
    pub labels: bool,
    /// Skip unreadable or mismatched files instead of failing.
    pub skip_bad: bool,
    /// Force grayscale (1) or RGB (3); default: grayscale if the first image is.
    pub channels: Option<u32>,
}

impl Dataset {
    /// Values per image.
    pub fn dim(&self) -> usize {
        self.shape.values()
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.values.len() / self.dim().max(1)
    }

    /// True when there is no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` samples of an isotropic Gaussian mixture (the data of an analytic model).
    pub fn from_mixture(m: &Mixture, n: usize, seed: u64, shape: ImageShape) -> Dataset {
        let total: f64 = m.weights.iter().map(|&w| w as f64).sum();
        let mut values = Vec::with_capacity(n * m.dim);
        for i in 0..n {
            let u = (rng::random_u64(seed, i as u64) >> 11) as f64 / (1u64 << 53) as f64 * total;
            let mut acc = 0.0;
            let mut k = m.components() - 1;
            for (c, &w) in m.weights.iter().enumerate() {
                acc += w as f64;
                if u < acc {
                    k = c;
                    break;
                }
            }
            let eps = rng::gaussian_vec(rng::image_seed(seed ^ 0x5eed, i as u64), m.dim);
            values.extend((0..m.dim).map(|j| m.means[k * m.dim + j] + m.stds[k] * eps[j]));
        }
        Dataset {
            shape,
            values,
            labels: None,
            label_count: 0,
            name: "mixture samples".into(),
            skipped: 0,
        }
    }

    /// Resolves `spec` (a shipped name, a `.fsd`/`.fsd.gz` file or an image folder) and loads it.
    pub fn load(spec: &str, opts: &FolderOptions) -> Result<Dataset, DataError> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Dataset::from_folder(path, opts);
        }
        let file = shipped_path(spec).or_else(|| path.is_file().then(|| path.to_path_buf()));
        let mut d = Dataset::from_fsd(
            &file.ok_or_else(|| DataError::Unknown(spec.to_string()))?,
            opts.resize,
        )?;
        if !opts.labels {
            // Unconditional training: the file's labels are not used.
            d.labels = None;
            d.label_count = 0;
        }
        Ok(d)
    }

    /// Reads the raw format of `data/fetch_data.py` (gzip-compressed when the name ends
    /// in `.gz`), optionally resizing to `resize x resize`.
    pub fn from_fsd(path: &Path, resize: Option<u32>) -> Result<Dataset, DataError> {
        use std::io::Read;
        let bad = |reason: String| DataError::BadRaw {
            path: path.to_path_buf(),
            reason,
        };
        let raw = std::fs::read(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bytes = if path.extension().is_some_and(|e| e == "gz") {
            let mut out = Vec::new();
            // Bounded: a shipped set is a few MB; refuse decompression bombs.
            flate2::read::GzDecoder::new(&raw[..])
                .take(1 << 30)
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("gzip data is corrupted ({e})")))?;
            out
        } else {
            raw
        };
        if bytes.len() < 28 || &bytes[..8] != FSD_MAGIC {
            return Err(bad("not a fewstep data file (no FSDATA1 magic)".into()));
        }
        let field = |i: usize| {
            u32::from_le_bytes([
                bytes[8 + 4 * i],
                bytes[9 + 4 * i],
                bytes[10 + 4 * i],
                bytes[11 + 4 * i],
            ]) as usize
        };
        let (n, c, h, w, labels) = (field(0), field(1), field(2), field(3), field(4));
        // Labels are stored one byte per image.
        if labels > 256 {
            return Err(bad(format!(
                "the header declares {labels} classes; labels are bytes, so at most 256"
            )));
        }
        let per = c
            .checked_mul(h)
            .and_then(|v| v.checked_mul(w))
            .filter(|&v| v > 0 && c <= 4);
        let Some(per) = per else {
            return Err(bad(format!("bad image shape {c}x{h}x{w}")));
        };
        let want = n
            .checked_mul(per)
            .and_then(|v| v.checked_add(if labels > 0 { n } else { 0 }))
            .and_then(|v| v.checked_add(28));
        if want != Some(bytes.len()) || n == 0 {
            return Err(bad(format!(
                "{} bytes do not hold {n} images of {c}x{h}x{w}{}",
                bytes.len(),
                if labels > 0 { " with labels" } else { "" }
            )));
        }
        let px = &bytes[28..28 + n * per];
        let label_vec = (labels > 0).then(|| {
            bytes[28 + n * per..]
                .iter()
                .map(|&l| l as u32)
                .collect::<Vec<_>>()
        });
        if let Some(l) = &label_vec
            && l.iter().any(|&y| y as usize >= labels)
        {
            return Err(bad(format!("a label is outside 0..{labels}")));
        }
        let (px, h, w) = match resize {
            Some(s) if (s as usize, s as usize) != (h, w) => {
                (resize_u8(px, n, c, h, w, s), s as usize, s as usize)
            }
            _ => (px.to_vec(), h, w),
        };
        Ok(Dataset {
            shape: ImageShape {
                channels: c as u32,
                height: h as u32,
                width: w as u32,
            },
            values: px.iter().map(|&v| v as f32 / 127.5 - 1.0).collect(),
            labels: label_vec,
            label_count: labels as u32,
            name: path.file_name().map_or_else(
                || path.display().to_string(),
                |f| {
                    f.to_string_lossy()
                        .trim_end_matches(".gz")
                        .trim_end_matches(".fsd")
                        .to_string()
                },
            ),
            skipped: 0,
        })
    }

    /// Loads every PNG/JPEG under `root` (recursively), in sorted path order.
    pub fn from_folder(root: &Path, opts: &FolderOptions) -> Result<Dataset, DataError> {
        let mut files = Vec::new();
        collect_images(root, &mut files)?;
        files.sort();
        if files.is_empty() {
            return Err(DataError::Empty(root.to_path_buf()));
        }
        let classes: Vec<String> = if opts.labels {
            if let Some(orphan) = files.iter().find(|f| class_of(root, f).is_none()) {
                return Err(DataError::Unlabelled {
                    path: orphan.clone(),
                    root: root.to_path_buf(),
                });
            }
            let mut c: Vec<String> = files.iter().filter_map(|f| class_of(root, f)).collect();
            c.sort();
            c.dedup();
            c
        } else {
            Vec::new()
        };
        let mut values = Vec::new();
        let mut labels = Vec::new();
        let mut size: Option<(u32, u32)> = None;
        let mut channels = opts.channels;
        let mut skipped = 0;
        for path in &files {
            let img = match open_image(path) {
                Ok(i) => i,
                Err(e) if opts.skip_bad => {
                    let _ = e;
                    skipped += 1;
                    continue;
                }
                Err(e) => {
                    return Err(DataError::BadImage {
                        path: path.clone(),
                        reason: e.to_string(),
                    });
                }
            };
            let img = match opts.resize {
                Some(n) => img.resize_exact(n, n, image::imageops::FilterType::Lanczos3),
                None => img,
            };
            let (w, h) = (img.width(), img.height());
            match size {
                None => size = Some((w, h)),
                Some((sw, sh)) if (sw, sh) != (w, h) => {
                    if opts.skip_bad {
                        skipped += 1;
                        continue;
                    }
                    return Err(DataError::Mismatch {
                        path: path.clone(),
                        got_w: w,
                        got_h: h,
                        want_w: sw,
                        want_h: sh,
                    });
                }
                _ => {}
            }
            let c = *channels.get_or_insert(if img.color().has_color() { 3 } else { 1 });
            let px: Vec<u8> = if c == 1 {
                img.to_luma8().into_raw()
            } else {
                img.to_rgb8().into_raw()
            };
            let hw = (w * h) as usize;
            for ch in 0..c as usize {
                values.extend((0..hw).map(|i| px[i * c as usize + ch] as f32 / 127.5 - 1.0));
            }
            if opts.labels {
                let name = class_of(root, path).unwrap_or_default();
                labels.push(classes.iter().position(|c| *c == name).unwrap_or(0) as u32);
            }
        }
        let (w, h) = size.ok_or_else(|| DataError::Empty(root.to_path_buf()))?;
        Ok(Dataset {
            shape: ImageShape {
                channels: channels.unwrap_or(1),
                height: h,
                width: w,
            },
            values,
            labels: opts.labels.then_some(labels),
            label_count: classes.len() as u32,
            name: root.file_name().map_or_else(
                || root.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            skipped,
        })
    }

    /// The indices of the batch at `step` of a run with `seed`: epoch-wise Fisher-Yates
    /// permutations, so every image is seen once per epoch.
    pub fn batch_indices(&self, seed: u64, step: u64, batch: usize) -> Vec<usize> {
        let n = self.len();
        let mut out = Vec::with_capacity(batch);
        let mut pos = step as u128 * batch as u128;
        let mut cached: Option<(u128, Vec<usize>)> = None;
        while out.len() < batch {
            let epoch = pos / n as u128;
            if cached.as_ref().map(|c| c.0) != Some(epoch) {
                let mut perm: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    let j = (rng::random_u64(seed ^ 0xDA7A, ((epoch as u64) << 32) ^ i as u64)
                        % (i as u64 + 1)) as usize;
                    perm.swap(i, j);
                }
                cached = Some((epoch, perm));
            }
            let perm = &cached.as_ref().map(|c| &c.1).expect("set above");
            out.push(perm[(pos % n as u128) as usize]);
            pos += 1;
        }
        out
    }

    /// The batch at `step`: `[B, d]` values and one-hot labels `[B, L]` if labelled.
    pub fn batch(
        &self,
        seed: u64,
        step: u64,
        batch: usize,
        device: &Device,
    ) -> (Tensor<2>, Option<Tensor<2>>) {
        let d = self.dim();
        let idx = self.batch_indices(seed, step, batch);
        let mut x = Vec::with_capacity(batch * d);
        for &i in &idx {
            x.extend_from_slice(&self.values[i * d..(i + 1) * d]);
        }
        let x = Tensor::from_data(TensorData::new(x, [batch, d]), device);
        let labels = self.labels.as_ref().map(|l| {
            let label_count = self.label_count as usize;
            sampler_core::denoiser::one_hot(idx.iter().map(|&i| l[i] as usize), label_count, device)
        });
        (x, labels)
    }
}

/// Largest image side and decoded size the trainer accepts (a 16000x16000 PNG would
/// otherwise be decoded before anything could refuse it).
const MAX_IMAGE_SIDE: u32 = 8192;
const MAX_IMAGE_BYTES: u64 = 256 << 20;

/// `image::open` with limits on the dimensions and the decoded size.
fn open_image(path: &Path) -> image::ImageResult<image::DynamicImage> {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    let mut reader = image::ImageReader::open(path)?.with_guessed_format()?;
    reader.limits(limits);
    reader.decode()
}

fn class_of(root: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(root).ok()?;
    let mut comps = rel.components();
    let first = comps.next()?;
    comps.next()?; // a file directly under root has no class
    Some(first.as_os_str().to_string_lossy().into_owned())
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.is_dir() {
            collect_images(&path, out)?;
        } else if let Some(ext) = path.extension().and_then(|e| e.to_str())
            && matches!(ext.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Standard normal noise for `(purpose, step)` of a run, `[rows, d]`, from the portable
/// generator: the same on every machine and after a resume.
pub fn noise(
    seed: u64,
    purpose: u64,
    step: u64,
    rows: usize,
    d: usize,
    device: &Device,
) -> Tensor<2> {
    let stream = rng::random_u64(seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15), step);
    Tensor::from_data(
        TensorData::new(rng::gaussian_vec(stream, rows * d), [rows, d]),
        device,
    )
}

/// Uniform integers in `0..n` for `(purpose, step)`.
pub fn uniform_indices(seed: u64, purpose: u64, step: u64, count: usize, n: usize) -> Vec<usize> {
    let stream = rng::random_u64(seed ^ purpose.wrapping_mul(0xD6E8_FEB8_6659_FD93), step);
    (0..count)
        .map(|k| (rng::random_u64(stream, k as u64) % n as u64) as usize)
        .collect()
}
