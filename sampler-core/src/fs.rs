//! Host conveniences (`std` feature): the one atomic file write that the CLI and the
//! trainer use, so an interrupted program never leaves half an image, bundle or checkpoint,
//! and the PNG writer of both.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary file [`write_atomic`] writes before renaming it to `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(std::format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it into place;
/// on failure the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Encodes `px` as an 8-bit PNG (gray, RGB or RGBA) and writes it with [`write_atomic`].
pub fn write_png(path: &Path, px: &crate::sampler::Pixels) -> std::io::Result<()> {
    let color = match px.channels {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        4 => png::ColorType::Rgba,
        n => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                std::format!("cannot write a PNG with {n} channels"),
            ));
        }
    };
    let mut buf = std::vec::Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut buf, px.width, px.height);
        encoder.set_color(color);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(&px.data)
            .map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)?;
    }
    write_atomic(path, &buf)
}
