//! kv-server snapshot archives (`archive::unpack`): the bytes of a raft
//! snapshot a follower receives, unpacked into a directory.
//!
//! Checks: an accepted archive unpacks only plain files inside the target
//! directory; packing that directory again and unpacking the result gives
//! the same files; an archive whose names are in order packs back to the
//! same bytes.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use flashkv_fuzz_support::{fixup, fresh_dir};
use kv_server::archive;
use libfuzzer_sys::fuzz_target;

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("read the unpacked directory")
        .map(|e| {
            let e = e.expect("directory entry");
            assert!(
                e.file_type().expect("file type").is_file(),
                "not a plain file"
            );
            let name = e.file_name().into_string().expect("a UTF-8 name");
            (
                name,
                std::fs::read(e.path()).expect("read an unpacked file"),
            )
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let bytes = fixup::input(data, fixup::archive);
    let root = fresh_dir("archive");
    let dir = root.join("unpacked");
    if archive::unpack(&bytes, &dir, Path::new("fuzz")).is_err() {
        return;
    }
    let entries: Vec<_> = std::fs::read_dir(&root).expect("read root").collect();
    assert_eq!(entries.len(), 1, "unpack wrote outside its directory");
    let got = files(&dir);

    let packed = archive::pack(&dir).expect("pack the unpacked directory");
    let dir2 = root.join("again");
    archive::unpack(&packed, &dir2, Path::new("fuzz")).expect("a packed archive unpacks");
    assert_eq!(files(&dir2), got, "pack and unpack lose files");
    // `pack` writes names in order; an archive written so is reproduced.
    if packed.len() == bytes.len() && packed != bytes {
        let names_sorted = {
            let mut seen = Vec::new();
            let mut r = &bytes[12..bytes.len() - 4];
            while let [a, b, rest @ ..] = r {
                let n = usize::from(u16::from_le_bytes([*a, *b]));
                seen.push(rest[..n].to_vec());
                let len = u64::from_le_bytes(rest[n..n + 8].try_into().expect("8 bytes"));
                r = &rest[n + 8 + len as usize..];
            }
            seen.windows(2).all(|w| w[0] < w[1])
        };
        assert!(
            !names_sorted,
            "an archive in order packs back to other bytes"
        );
    }
});
