//! `member ...` (SPEC section 7): rendering of the membership commands.

use kv_client::Client;
use serde_json::json;

use crate::cli::MemberCmd;
use crate::exec::Rendered;

/// Runs a `member` subcommand.
pub async fn member(client: &Client, cmd: MemberCmd, json: bool) -> Result<Rendered, Rendered> {
    let fail = |e: kv_client::Error| Rendered::failure(json, &e);
    let ok = || Rendered::ok_json(json, json!({"ok": true}), vec![b"OK".to_vec()]);
    Ok(match cmd {
        MemberCmd::List => {
            let m = client.member_list().await.map_err(fail)?;
            let mut plain = Vec::new();
            let mut list = Vec::new();
            for x in &m.members {
                let role = if x.voter { "voter" } else { "learner" };
                let mut line = format!("{}\t{}\t{}\t{role}", x.id, x.peer_addr, x.advertise);
                if x.leader {
                    line.push_str("\tleader");
                }
                plain.push(line.into_bytes());
                list.push(json!({
                    "id": x.id, "peer_addr": x.peer_addr, "advertise": x.advertise,
                    "role": role, "leader": x.leader, "matched": x.matched,
                }));
            }
            Rendered::ok_json(json, json!({"ok": true, "members": list}), plain)
        }
        MemberCmd::Add {
            id,
            peer_addr,
            advertise,
            learner,
        } => {
            client
                .member_add(id, &peer_addr, advertise.as_deref(), learner)
                .await
                .map_err(fail)?;
            ok()
        }
        MemberCmd::Promote { id } => {
            client.member_promote(id).await.map_err(fail)?;
            ok()
        }
        MemberCmd::Remove { id } => {
            client.member_remove(id).await.map_err(fail)?;
            ok()
        }
    })
}

/// Bytes asked for per read of a backup.
const READ_CHUNK: u32 = 4 << 20;

/// Runs a `snapshot` subcommand.
pub async fn snapshot(
    client: &Client,
    cmd: crate::cli::SnapshotCmd,
    json: bool,
) -> Result<Rendered, Rendered> {
    use crate::cli::SnapshotCmd;
    use kv_server::backup::file;
    let fail = |e: kv_client::Error| Rendered::failure(json, &e);
    let local = |e: kv_server::Error| {
        Rendered::failure(
            json,
            &kv_client::Error::Unavailable {
                message: e.to_string(),
                definite: true,
            },
        )
    };
    Ok(match cmd {
        SnapshotCmd::Save { file: path } => {
            let handle = client.snapshot_begin().await.map_err(fail)?;
            let header = file::Header {
                index: handle.index,
                term: handle.term,
                keys: handle.keys,
                files: handle.files.clone(),
            };
            let total = header.data_bytes();
            let written = async {
                let mut w =
                    file::Writer::create(std::path::Path::new(&path), &header).map_err(local)?;
                let mut offset = 0u64;
                while offset < total {
                    let chunk = client
                        .snapshot_read(&handle, offset, READ_CHUNK)
                        .await
                        .map_err(fail)?;
                    if chunk.is_empty() {
                        return Err(fail(kv_client::Error::Unavailable {
                            message: format!("backup ended at {offset} of {total} bytes"),
                            definite: true,
                        }));
                    }
                    offset += chunk.len() as u64;
                    w.write(&chunk).map_err(local)?;
                }
                w.finish().map_err(local)
            }
            .await;
            let _ = client.snapshot_release(&handle).await;
            let (size, checksum) = written?;
            Rendered::ok_json(
                json,
                json!({"ok": true, "file": path, "size": size, "index": handle.index,
                       "term": handle.term, "keys": handle.keys,
                       "checksum": format!("{checksum:08x}")}),
                vec![
                    format!(
                        "saved {path}: {size} bytes, index {}, checksum {checksum:08x}",
                        handle.index
                    )
                    .into_bytes(),
                ],
            )
        }
        SnapshotCmd::Info { file: path } => {
            let p = std::path::PathBuf::from(&path);
            let v = tokio::task::spawn_blocking(move || file::read(&p, None))
                .await
                .map_err(|e| Rendered::usage(json, &e.to_string()))?
                .map_err(|e| Rendered::usage(json, &e.to_string()))?;
            let h = &v.header;
            Rendered::ok_json(
                json,
                json!({"ok": true, "file": path, "index": h.index, "term": h.term,
                       "size": v.size, "checksum": format!("{:08x}", v.checksum),
                       "keys": h.keys}),
                vec![
                    format!(
                        "index={} term={} size={} checksum={:08x} keys={}",
                        h.index, h.term, v.size, v.checksum, h.keys
                    )
                    .into_bytes(),
                ],
            )
        }
    })
}
