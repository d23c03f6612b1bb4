//! Host conveniences (`std` feature): the one atomic file write that the CLI and the
//! trainer use, so an interrupted program never leaves half an image, bundle or checkpoint,
//! and the PNG writer of both.
//!
//! What an output path may be: a new file, or an existing regular file (replaced). Anything
//! else that exists is refused and left as it is: a directory, a device such as `/dev/null`,
//! a FIFO, a socket (renaming over it would destroy it, and as root that includes the
//! system's device nodes), and a symbolic link, which is never followed (replacing the link
//! would surprise, writing through it would let whoever made the link choose which file a
//! program running as root overwrites): write to the link's target by its own name.

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

/// Checks that `path` is new or a regular file (see the module doc); the error names what
/// it is otherwise.
pub fn check_output(path: &Path) -> std::io::Result<()> {
    let refuse = |what: &str| {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            std::format!(
                "{} is {what}, not a regular file; refusing to replace it",
                path.display()
            ),
        ))
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let ft = meta.file_type();
    if ft.is_file() {
        Ok(())
    } else if ft.is_symlink() {
        refuse("a symbolic link (never followed: write to its target by name)")
    } else if ft.is_dir() {
        refuse("a directory")
    } else {
        refuse("a device, FIFO or socket")
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it into place;
/// on failure the temporary file is removed and `path` is untouched. `path` must be new or
/// a regular file (see the module doc); temporary files that killed writers left beside it
/// are removed first.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    check_output(path)?;
    remove_stale_temps(path);
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

/// Writes several files as one: every target is checked before anything is written, every
/// file goes to its temporary first, and only when all are written and synced are they
/// renamed into place. A refusal or a failed write leaves no target created or changed
/// (a failure between two renames, e.g. a full disk cannot cause one, is the only window).
pub fn write_atomic_all(files: &[(&Path, &[u8])]) -> std::io::Result<()> {
    for (path, _) in files {
        check_output(path)?;
    }
    let mut temps: std::vec::Vec<PathBuf> = std::vec::Vec::with_capacity(files.len());
    let result = (|| {
        for (path, bytes) in files {
            remove_stale_temps(path);
            let tmp = temp_path(path);
            temps.push(tmp.clone());
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        for ((path, _), tmp) in files.iter().zip(&temps) {
            std::fs::rename(tmp, path)?;
        }
        Ok(())
    })();
    if result.is_err() {
        for tmp in &temps {
            let _ = std::fs::remove_file(tmp);
        }
    }
    result
}

/// Removes `.NAME.tmp-PID` files beside `path` whose process is gone (a writer killed
/// between write and rename). Only on systems with `/proc`; best effort.
fn remove_stale_temps(path: &Path) {
    let proc = Path::new("/proc/self");
    if !proc.exists() {
        return;
    }
    let Some(dir) = temp_path(path).parent().map(Path::to_path_buf) else {
        return;
    };
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let prefix = std::format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = Path::new("/proc").join(std::format!("{pid}")).exists();
        let regular = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if !alive && regular {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Encodes `px` as an 8-bit PNG (gray, RGB or RGBA) and writes it with [`write_atomic`].
pub fn write_png(path: &Path, px: &crate::sampler::Pixels) -> std::io::Result<()> {
    write_atomic(path, &encode_png(px)?)
}

/// `px` as the bytes of an 8-bit PNG (gray, RGB or RGBA).
pub fn encode_png(px: &crate::sampler::Pixels) -> std::io::Result<std::vec::Vec<u8>> {
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
    Ok(buf)
}

/// A size on the command line: `1073741824`, `512M`, `4G`, `64k` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, std::string::String> {
    let s = s.trim();
    let not_a_size = || std::format!("'{s}' is not a size such as 512M or 4G");
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(not_a_size()),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| not_a_size())?;
    n.checked_mul(1u64 << shift)
        .filter(|&b| b > 0)
        .ok_or_else(not_a_size)
}

/// Bytes in KiB, MiB or GiB, for messages.
pub fn human_size(bytes: u64) -> std::string::String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        std::format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        std::format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        std::format!("{:.0} KiB", b / 1024.0)
    }
}
