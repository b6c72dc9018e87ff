//! Generates the bindings from the installed `rocksdb/c.h` and links the
//! system librocksdb dynamically. `ROCKSDB_INCLUDE_DIR` (default
//! `/usr/include`) and `ROCKSDB_LIB_DIR` (default the directory that holds
//! librocksdb.so among the usual ones) override where they are looked for;
//! `LIBCLANG_PATH` tells bindgen where libclang is.

use std::env;
use std::path::{Path, PathBuf};

const INSTALL: &str = "install the system RocksDB and libclang: \
    `apt-get install -y librocksdb-dev libclang-dev` (Debian 12: RocksDB 7.8.3)";

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}\n{INSTALL}");
    panic!("{msg}; {INSTALL}");
}

fn main() {
    for var in ["ROCKSDB_INCLUDE_DIR", "ROCKSDB_LIB_DIR", "LIBCLANG_PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let include = PathBuf::from(env::var("ROCKSDB_INCLUDE_DIR").unwrap_or("/usr/include".into()));
    let header = include.join("rocksdb/c.h");
    if !header.is_file() {
        fail(&format!(
            "RocksDB's C header {} not found",
            header.display()
        ));
    }
    println!("cargo:rerun-if-changed={}", header.display());
    let version = version(&include.join("rocksdb/version.h"));
    println!("cargo:rustc-env=SYSTEM_ROCKSDB_VERSION={version}");

    let lib_dir = match env::var("ROCKSDB_LIB_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
            "/usr/local/lib",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("librocksdb.so").exists())
        .unwrap_or_else(|| fail("the shared library librocksdb.so not found")),
    };
    if !lib_dir.join("librocksdb.so").exists() {
        fail(&format!("{}/librocksdb.so not found", lib_dir.display()));
    }

    // The same settings as librocksdb-sys 0.10's bindings.
    let generated = std::panic::catch_unwind(|| {
        bindgen::Builder::default()
            .header(header.to_string_lossy())
            .derive_debug(false)
            .blocklist_type("max_align_t")
            .ctypes_prefix("libc")
            .size_t_is_usize(true)
            .generate()
    });
    let bindings = match generated {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => fail(&format!(
            "bindgen could not parse {}: {e}",
            header.display()
        )),
        Err(_) => fail("bindgen failed (is libclang installed? LIBCLANG_PATH selects one)"),
    };
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("bindings.rs");
    bindings
        .write_to_file(&out)
        .unwrap_or_else(|e| fail(&format!("writing {}: {e}", out.display())));

    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=rocksdb");
    println!("cargo:rustc-link-lib=dylib=stdc++");
    println!("cargo:version={version}");
}

/// "MAJOR.MINOR.PATCH" from rocksdb/version.h, or "unknown".
fn version(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return "unknown".into();
    };
    let get = |name: &str| {
        text.lines()
            .filter_map(|l| l.strip_prefix("#define "))
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u32>().ok())
    };
    match (
        get("ROCKSDB_MAJOR"),
        get("ROCKSDB_MINOR"),
        get("ROCKSDB_PATCH"),
    ) {
        (Some(a), Some(b), Some(c)) => format!("{a}.{b}.{c}"),
        _ => "unknown".into(),
    }
}
