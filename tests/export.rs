//! A trained model leaves the tool: a short hybrid-sharded training run
//! (4 ranks, shard groups of 2) is exported to safetensors, its features
//! embedded and kNN-evaluated; `tests/python/export_check.py` (the project
//! venv's torch and torchvision) then loads the export into torchvision's
//! `RegNet` with `strict=True`, checks its features equal `embed`'s within
//! 1e-5, and that a numpy kNN on those features predicts what `eval knn` did.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn seerscale(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seerscale")).current_dir(root()).args(args).output().expect("cannot start seerscale")
}

fn ok(args: &[&str]) -> String {
    let out = seerscale(args);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "seerscale {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

fn python(args: &[&str]) -> String {
    let py = root().join(".venv/bin/python");
    assert!(py.exists(), "the project venv is missing: run scripts/setup");
    let out = Command::new(py).current_dir(root()).arg("tests/python/export_check.py").args(args).output().expect("cannot start python");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "export_check.py {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// The tensor data of a safetensors file (after its JSON header, whose
/// metadata order may differ from write to write).
fn tensor_bytes(p: &Path) -> Vec<u8> {
    let raw = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    raw[8 + n..].to_vec()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn an_exported_model_loads_into_torchvision_and_its_features_and_knn_agree() {
    let dir = std::env::temp_dir().join(format!("seerscale-export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (plan, run, model, folders) = (dir.join("plan.json"), dir.join("run"), dir.join("model.safetensors"), dir.join("images"));
    ok(&["plan", "--recipe", "tiny-cpu", "--gpus", "4", "--sharding", "hybrid:2", "--out", s(&plan)]);
    ok(&["train", "--plan", s(&plan), "--nproc-per-node", "4", "--steps", "2", "--checkpoint-every", "2", "--out", s(&run), "--timeout-s", "60"]);
    let exported = ok(&["export", "--checkpoint", s(&run), "--out", s(&model)]);
    assert!(exported.contains("step 2") && exported.contains("torchvision"), "{exported}");

    python(&["make-folders", ".photos", s(&folders)]);
    let (train, val) = (folders.join("train"), folders.join("val"));
    let (tf, vf) = (dir.join("train.safetensors"), dir.join("val.safetensors"));
    ok(&["embed", "--weights", s(&model), "--data", s(&train), "--out", s(&tf), "--resolution", "56"]);
    let embedded = ok(&["embed", "--weights", s(&model), "--data", s(&val), "--out", s(&vf), "--resolution", "56"]);
    assert!(embedded.contains("12 images -> features [12, 64]"), "{embedded}");
    // The checkpoint itself embeds to the same features as its export.
    let direct = dir.join("val-direct.safetensors");
    ok(&["embed", "--checkpoint", s(&run), "--data", s(&val), "--out", s(&direct), "--resolution", "56"]);
    assert_eq!(tensor_bytes(&vf), tensor_bytes(&direct), "embed --checkpoint and embed --weights differ");

    let knn = ok(&["eval", "knn", "--weights", s(&model), "--train", s(&train), "--val", s(&val), "--resolution", "56", "--k", "5", "--json"]);
    let knn_path = dir.join("knn.json");
    std::fs::write(&knn_path, &knn).unwrap();
    let r: serde_json::Value = serde_json::from_str(&knn).unwrap();
    assert_eq!((r["train_images"].as_u64(), r["val_images"].as_u64()), (Some(24), Some(12)), "{knn}");
    assert_eq!(r["per_class"].as_array().unwrap().len(), 4, "{knn}");
    let table = ok(&["eval", "knn", "--weights", s(&model), "--train", s(&train), "--val", s(&val), "--resolution", "56", "--k", "5"]);
    assert!(table.contains("top-1") && table.contains("top-5"), "{table}");

    let checked = python(&["check", s(&model), s(&tf), s(&vf), s(&knn_path), "5", "0.07"]);
    println!("{checked}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bad input is a one-line error naming what is wrong.
#[test]
fn export_and_embed_refuse_bad_input_in_one_line() {
    let dir = std::env::temp_dir().join(format!("seerscale-export-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let one_line = |args: &[&str]| -> String {
        let out = seerscale(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        lines[0].to_string()
    };
    let e = one_line(&["export", "--checkpoint", s(&dir.join("nope")), "--out", s(&dir.join("m.safetensors"))]);
    assert!(e.contains("no such folder"), "{e}");
    let e = one_line(&["export", "--checkpoint", s(&dir), "--out", s(&dir.join("m.safetensors"))]);
    assert!(e.contains("no published checkpoint"), "{e}");
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"not a model").unwrap();
    let e = one_line(&["embed", "--weights", s(&junk), "--data", ".photos", "--out", s(&dir.join("f.safetensors"))]);
    assert!(e.contains("junk.safetensors") && e.contains("not a safetensors file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
