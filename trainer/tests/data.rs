//! Data loading: the shipped raw sets, image folders, and refusal of damaged inputs.

use trainer::data::{Dataset, FolderOptions, shipped_path};

#[test]
fn shipped_sets_load_with_their_shapes_and_labels() {
    let labelled = FolderOptions {
        labels: true,
        ..Default::default()
    };
    let m = Dataset::load("mnist", &labelled).unwrap();
    assert_eq!(
        (m.len(), m.shape.height, m.shape.width, m.label_count),
        (9000, 28, 28, 10)
    );
    let t = Dataset::load("mnist-test", &labelled).unwrap();
    assert_eq!((t.len(), t.label_count), (1000, 10));
    let labels = t.labels.as_ref().unwrap();
    assert!((0..10).all(|k| labels.iter().filter(|&&y| y == k).count() == 100));
    let f = Dataset::load("faces", &FolderOptions::default()).unwrap();
    assert_eq!(
        (f.len(), f.shape.height, f.shape.width, f.label_count),
        (100, 25, 25, 0)
    );
    let d = Dataset::load("digits", &FolderOptions::default()).unwrap();
    assert_eq!(
        (d.len(), d.shape.height, d.label_count),
        (1797, 8, 0),
        "labels unused unless asked"
    );
    for set in [&m, &f, &d] {
        assert!(set.values.iter().all(|v| (-1.0..=1.0).contains(v)));
        let mean = set.values.iter().map(|&v| v as f64).sum::<f64>() / set.values.len() as f64;
        assert!(mean > -0.99 && mean < 0.9, "{}: mean {mean}", set.name);
    }
    let r = Dataset::load(
        "faces",
        &FolderOptions {
            resize: Some(32),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((r.len(), r.shape.height, r.shape.width), (100, 32, 32));
}

#[test]
fn damaged_raw_files_are_refused_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(shipped_path("digits").unwrap()).unwrap();
    let mut raw = Vec::new();
    use std::io::Read;
    flate2::read::GzDecoder::new(&good[..])
        .read_to_end(&mut raw)
        .unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("short.fsd", raw[..raw.len() - 1].to_vec()),
        ("magic.fsd", [b"NOTDATA!".as_slice(), &raw[8..]].concat()),
        ("huge.fsd", {
            let mut r = raw.clone();
            r[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
            r
        }),
        ("label.fsd", {
            let mut r = raw.clone();
            let last = r.len() - 1;
            r[last] = 10;
            r
        }),
        ("bad.fsd.gz", good[..good.len() / 2].to_vec()),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = Dataset::load(
            path.to_str().unwrap(),
            &FolderOptions {
                labels: true,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains(name), "{name}: {err}");
    }
    assert!(
        Dataset::load("no-such-set", &FolderOptions::default())
            .unwrap_err()
            .to_string()
            .contains("unknown data set")
    );
}

#[test]
fn image_folders_give_labels_sizes_and_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (class, k) in [("cat", 0u8), ("dog", 1)] {
        std::fs::create_dir_all(dir.path().join(class)).unwrap();
        for i in 0..3u8 {
            let img = image::GrayImage::from_pixel(6, 6, image::Luma([40 * i + 100 * k]));
            img.save(dir.path().join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    let opts = FolderOptions {
        labels: true,
        ..Default::default()
    };
    let d = Dataset::from_folder(dir.path(), &opts).unwrap();
    assert_eq!((d.len(), d.label_count, d.shape.channels), (6, 2, 1));
    assert_eq!(d.labels.as_deref(), Some(&[0, 0, 0, 1, 1, 1][..]));
    assert!((d.values[0] + 1.0).abs() < 1e-6, "0 maps to -1");
    // Deterministic shuffling: a batch covers an epoch without repeats.
    let mut idx = d.batch_indices(3, 0, 6);
    idx.sort();
    assert_eq!(idx, (0..6).collect::<Vec<_>>());
    assert_eq!(d.batch_indices(3, 1, 6), d.batch_indices(3, 1, 6));
    // A mismatched size names the file; --skip-bad counts it instead.
    image::GrayImage::new(7, 7)
        .save(dir.path().join("dog").join("odd.png"))
        .unwrap();
    let err = Dataset::from_folder(dir.path(), &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("odd.png") && err.contains("--resize"), "{err}");
    let skipped = Dataset::from_folder(
        dir.path(),
        &FolderOptions {
            skip_bad: true,
            ..opts.clone()
        },
    )
    .unwrap();
    assert_eq!((skipped.len(), skipped.skipped), (6, 1));
    let resized = Dataset::from_folder(
        dir.path(),
        &FolderOptions {
            resize: Some(4),
            ..opts
        },
    )
    .unwrap();
    assert_eq!((resized.len(), resized.shape.width), (7, 4));
}
