//! `--data` at scale through the CLI: WebDataset tar shards written by
//! Python's `tarfile`, mid-epoch resume from them, `data pack` and `data
//! bench`, and a run's resident memory against its shard count.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

mod common;

use common::*;

/// Writes `shards` tar shards `part-<k>.tar` into `dir` with Python's
/// `tarfile`: `per` samples each (`<key>.jpg` or `.png` with the bytes of a
/// bundled photo, and `<key>.cls`); `corrupt` names (shard, sample) pairs
/// whose image is garbage.
fn python_shards(dir: &Path, shards: usize, per: usize, corrupt: &[(usize, usize)]) {
    let script = r#"
import io, os, sys, tarfile, json
out, shards, per, corrupt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
photos = sorted(os.path.join(".photos", f) for f in os.listdir(".photos") if f.endswith((".jpg", ".png")))
def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
n = 0
for s in range(shards):
    with tarfile.open(os.path.join(out, f"part-{s}.tar"), "w") as tar:
        for i in range(per):
            photo = photos[n % len(photos)]
            data = open(photo, "rb").read()
            if [s, i] in corrupt:
                data = b"\xff\xd8\xff" + b"garbage" * 20
            key = f"{s:02d}{i:04d}"
            add(tar, key + os.path.splitext(photo)[1], data)
            add(tar, key + ".cls", str(n % 10).encode())
            n += 1
"#;
    let corrupt = serde_json::to_string(&corrupt.iter().map(|&(s, i)| [s, i]).collect::<Vec<_>>()).unwrap();
    let out = Command::new(root().join(".venv/bin/python"))
        .args(["-c", script, dir.to_str().unwrap(), &shards.to_string(), &per.to_string(), &corrupt])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn plan(dir: &TempDir, gpus: usize) -> String {
    let p = dir.s(&format!("plan{gpus}.json"));
    ok(&["plan", "--recipe", "tiny-cpu", "--gpus", &gpus.to_string(), "--out", &p]);
    p
}

fn metrics(run: &Path, rank: usize) -> Vec<Value> {
    let text = std::fs::read_to_string(run.join(format!("metrics.rank{rank}.jsonl"))).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn losses(run: &Path) -> Vec<(u64, f64)> {
    let mut v: Vec<(u64, f64)> = metrics(run, 0).iter().map(|m| (m["step"].as_u64().unwrap(), m["loss"].as_f64().unwrap())).collect();
    v.sort_by_key(|x| x.0);
    v
}

fn train(plan: &str, ranks: usize, data: &str, run: &str, extra: &[&str]) -> Output {
    let n = ranks.to_string();
    let mut args = vec!["train", "--plan", plan, "--nproc-per-node", &n, "--data", data, "--out", run, "--threads", "1", "--workers", "1", "--timeout-s", "30"];
    args.extend_from_slice(extra);
    seerscale(&args)
}

/// tiny-cpu on 2 ranks from 4 shards written by Python's `tarfile` (brace
/// notation), one JPEG in them corrupt: the run skips, counts and names it.
/// A run stopped mid-epoch and resumed (shuffle buffer part full) trains on
/// the uninterrupted run's batches: the same losses. The same checkpoint
/// resumes on 1 rank, the shards dealt again.
#[test]
fn tar_shards_train_skip_a_corrupt_jpeg_and_resume_mid_epoch() {
    let dir = TempDir::new("shards");
    std::fs::create_dir_all(dir.path("shards")).unwrap();
    python_shards(&dir.path("shards"), 4, 12, &[(2, 3)]);
    let spec = format!("{}/part-{{0..3}}.tar", dir.s("shards"));
    let plan2 = plan(&dir, 2);
    let common = ["--steps", "6", "--checkpoint-every", "2", "--shuffle-buffer", "5"];
    let whole = dir.s("whole");
    let out = train(&plan2, 2, &spec, &whole, &common);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // 2 shards of 12 per rank: 3 steps an epoch, so 6 steps read every
    // sample twice, the corrupt one included.
    assert!(stderr.contains("part-2.tar:020003"), "the warning names the sample: {stderr}");
    // Each rank counts the sample once however often it reads it (the
    // shards are dealt again each epoch, so both ranks may meet it).
    let skipped: Vec<u64> = (0..2).map(|r| metrics(Path::new(&whole), r).last().unwrap()["skipped_images"].as_u64().unwrap()).collect();
    assert!(skipped.iter().all(|&n| n <= 1) && skipped.iter().sum::<u64>() >= 1, "{skipped:?}");
    assert!(text(&out.stdout).contains("unreadable image files skipped"), "{}", text(&out.stdout));

    let resumed = dir.s("resumed");
    let first = [&common[..], &["--stop-after", "2"]].concat();
    assert!(train(&plan2, 2, &spec, &resumed, &first).status.success());
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(dir.path("resumed/checkpoints/step_00000002/rank0.json")).unwrap()).unwrap();
    let stream = &meta["data_stream"];
    assert_eq!((stream["epoch"].as_u64(), stream["step"].as_u64()), (Some(0), Some(2)), "{meta}");
    assert!(!stream["buffer"].as_array().unwrap().is_empty(), "saved mid-epoch with samples buffered: {stream}");
    let out = train(&plan2, 2, &spec, &resumed, &[&common[..], &["--resume"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (a, b) = (losses(Path::new(&whole)), losses(Path::new(&resumed)));
    assert_eq!(a.len(), 6);
    assert_eq!(a.iter().map(|x| x.0).collect::<Vec<_>>(), b.iter().map(|x| x.0).collect::<Vec<_>>());
    for ((s, x), (_, y)) in a.iter().zip(&b) {
        assert!(((x - y) / x).abs() < 1e-6, "step {s}: uninterrupted {x} vs resumed {y}");
    }

    // `data index` writes the counts the shards' headers give.
    let out = ok(&["data", "index", "--data", &spec]);
    assert!(text(&out.stdout).contains("4 shards, 48 samples"), "{}", text(&out.stdout));
    let index: Value = serde_json::from_str(&std::fs::read_to_string(dir.path("shards/index.json")).unwrap()).unwrap();
    assert_eq!(index["shards"].as_array().unwrap().iter().map(|s| s["samples"].as_u64().unwrap()).collect::<Vec<_>>(), [12, 12, 12, 12]);

    // On 1 rank (global batch 8 instead of 16: step 2 becomes step 4).
    let plan1 = plan(&dir, 1);
    let one = dir.s("one");
    std::fs::create_dir_all(&one).unwrap();
    copy_dir(&dir.path("resumed/checkpoints/step_00000002"), &dir.path("one/checkpoints/step_00000002"));
    std::fs::write(dir.path("one/checkpoints/latest"), "step_00000002\n").unwrap();
    let out = train(&plan1, 1, &spec, &one, &["--steps", "8", "--resume"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("resuming a 2-rank"), "{stdout}");
    assert_eq!(losses(Path::new(&one)).iter().map(|x| x.0).collect::<Vec<_>>(), [4, 5, 6, 7]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// `data pack` writes a folder as shards plus index.json (a folder of shards
/// then trains with `--data DIR`); `data bench --json` measures them, and
/// with `--plan` says how many loader cores per GPU the plan needs. Bad
/// input is one line naming it.
#[test]
fn data_pack_then_bench_and_train_from_the_pack() {
    let dir = TempDir::new("pack");
    let photos = root().join(".photos");
    let out = ok(&["data", "pack", "--data", photos.to_str().unwrap(), "--out", &dir.s("packed"), "--shard-size", "2MiB"]);
    let index: Value = serde_json::from_str(&std::fs::read_to_string(dir.path("packed/index.json")).unwrap()).unwrap();
    let shards = index["shards"].as_array().unwrap();
    assert!(shards.len() >= 3, "{index}");
    let images =
        std::fs::read_dir(&photos).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "png" || x == "jpg" || x == "jpeg")).count();
    assert_eq!(index["samples"].as_u64().unwrap() as usize, images, "{}", text(&out.stdout));
    assert!(shards.iter().all(|s| s["bytes"].as_u64().unwrap() <= 2 << 20 || s["samples"] == 1), "{index}");
    let again = seerscale(&["data", "pack", "--data", photos.to_str().unwrap(), "--out", &dir.s("packed")]);
    assert!(!again.status.success() && text(&again.stderr).contains("not empty"), "{}", text(&again.stderr));

    let p = plan(&dir, 1);
    let out = ok(&[
        "data",
        "bench",
        "--data",
        &dir.s("packed"),
        "--crops",
        "2x32,2x16",
        "--images",
        "8",
        "--seconds",
        "0.2",
        "--threads",
        "1,2",
        "--json",
        "--plan",
        &p,
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["images_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    assert!(v["plan"]["loader_cores_per_gpu"].as_f64().unwrap() > 0.0, "{v}");
    let bad = seerscale(&["data", "bench", "--crops", "2x160,4"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("COUNTxRESOLUTION"), "{}", text(&bad.stderr));

    let run = dir.s("run");
    let out = train(&p, 1, &dir.s("packed"), &run, &["--steps", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(metrics(Path::new(&run), 0).len(), 2);
    let missing = train(&p, 1, &format!("{}/shard-{{000000..000999}}.tar", dir.s("packed")), &run, &["--steps", "1"]);
    let e = text(&missing.stderr);
    assert!(!missing.status.success() && e.contains("no such shard") && e.lines().filter(|l| l.starts_with("error")).count() == 1, "{e}");
}

/// Resident memory does not grow with the shard count: 1,000 one-sample
/// shards train in the memory of about 10 shards of 100 (the same 1,000 images).
#[test]
fn a_thousand_shards_take_the_memory_of_ten() {
    let dir = TempDir::new("rss");
    let imgs = dir.path("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for i in 0..1000u32 {
        let img = image::RgbImage::from_fn(40, 32, |x, y| image::Rgb([(x * 6 + i) as u8, (y * 7) as u8, (i / 4) as u8]));
        img.save(imgs.join(format!("{i:04}.png"))).unwrap();
    }
    let bytes = std::fs::read_dir(&imgs).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).max().unwrap();
    ok(&["data", "pack", "--data", imgs.to_str().unwrap(), "--out", &dir.s("ten"), "--shard-size", &format!("{}", 100 * (bytes + 1024))]);
    ok(&["data", "pack", "--data", imgs.to_str().unwrap(), "--out", &dir.s("thousand"), "--shard-size", "1KiB"]);
    let count = |d: &str| std::fs::read_dir(dir.path(d)).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "tar")).count();
    assert!((5..=12).contains(&count("ten")), "{}", count("ten"));
    assert_eq!(count("thousand"), 1000);
    let p = plan(&dir, 1);
    let rss = |data: &str| {
        let run = dir.s(&format!("run-{data}"));
        let out = train(&p, 1, &dir.s(data), &run, &["--steps", "12", "--shuffle-buffer", "16"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let m = metrics(Path::new(&run), 0);
        m.iter().skip(4).map(|s| s["host_rss_bytes"].as_u64().unwrap()).max().unwrap()
    };
    let (ten, thousand) = (rss("ten"), rss("thousand"));
    assert!(ten > 0);
    let diff = (thousand as f64 - ten as f64) / ten as f64;
    assert!(diff.abs() < 0.05, "resident memory: 10 shards {ten} B, 1000 shards {thousand} B ({:+.1} %)", diff * 100.0);
}
