//! Embeds every file of the catalog folder into the binary, so the catalog is
//! data that lives beside the code but ships inside `latchkey`.
use std::{env, fs, path::PathBuf};

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../catalog");
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for sub in ["integrations", "services"] {
        let dir = root.join(sub);
        println!("cargo:rerun-if-changed={}", dir.display());
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                println!("cargo:rerun-if-changed={}", path.display());
                let name = format!("{sub}/{}", path.file_name().unwrap().to_string_lossy());
                files.push((name, path.canonicalize().unwrap()));
            }
        }
    }
    files.sort();
    let mut out = String::from("pub(crate) static CATALOG_FILES: &[(&str, &str)] = &[\n");
    for (name, path) in files {
        out.push_str(&format!(
            "    ({name:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    fs::write(
        PathBuf::from(env::var("OUT_DIR").unwrap()).join("catalog_files.rs"),
        out,
    )
    .unwrap();
}
