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
