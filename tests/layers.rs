//! Imports run one way (issue 12): `governor` ← `config` ← `record` ← `ports` ← `adapters` /
//! `fakes` / `app`. The ports, the records, the adapters and the fakes never name the app
//! layer outside their tests, so an adapter can be reused (and tested) without the commands,
//! and no cycle comes back. This reads the sources as text: a `use crate::app::…` (or a path through it) in a
//! non-test line fails.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn ports_records_and_adapters_do_not_import_the_app_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.join("ports.rs"), src.join("governor/mod.rs")];
    for dir in ["adapters", "record", "governor", "config", "fakes"] {
        rust_files(&src.join(dir), &mut files);
    }
    let mut offences = Vec::new();
    for f in &files {
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.trim_start();
            // A file's own test module comes last; stop there.
            if code.starts_with("#[cfg(test)]") {
                break;
            }
            if code.starts_with("//") {
                continue;
            }
            if code.contains("crate::app")
                || code.contains("crate::sim")
                || code.contains("crate::cli")
            {
                offences.push(format!("{}:{}: {code}", f.display(), i + 1));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "imports against the layering:\n{}",
        offences.join("\n")
    );
}
