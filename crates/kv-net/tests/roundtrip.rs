//! Every request type through a real listener and a `ClientConn`.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{MemKv, Server, bounded, get, get_value, put};
use kv_net::proto::{self, BatchOp, ErrorCode, Request, Role, batch_op};
use kv_net::{ClientConn, Options};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_type_roundtrips() {
    bounded(async {
        let service = Arc::new(MemKv::default());
        let server = Server::start(service.clone(), Options::default()).await;
        let conn = ClientConn::connect(&server.addr.to_string(), &Options::default())
            .await
            .unwrap();

        // Put, with de-duplication fields carried through.
        let mut req = put("a", "1");
        req.client_id = 77;
        req.seq = 5;
        let resp = conn.call(req).await.unwrap();
        assert!(resp.has_put(), "{resp:?}");
        assert_eq!(*service.writes_seen.lock().unwrap(), vec![(77, 5)]);

        // Get: found, absent, serializable flag.
        assert_eq!(get_value(&conn.call(get("a")).await.unwrap()), Some(b("1")));
        let mut req = get("zz");
        req.mut_get().serializable = true;
        assert_eq!(get_value(&conn.call(req).await.unwrap()), None);

        // Binary values survive unchanged, including an empty one.
        let mut req = put("bin", "");
        req.mut_put().value = Bytes::from((0..=255u8).collect::<Vec<_>>());
        conn.call(req).await.unwrap();
        let v = get_value(&conn.call(get("bin")).await.unwrap()).unwrap();
        assert_eq!(v.len(), 256);
        conn.call(put("empty", "")).await.unwrap();
        assert_eq!(
            get_value(&conn.call(get("empty")).await.unwrap()),
            Some(Bytes::new())
        );

        // Delete.
        let mut del = proto::Delete::new();
        del.key = b("bin");
        let mut req = Request::new();
        req.set_delete(del);
        assert!(conn.call(req).await.unwrap().has_delete());
        assert_eq!(get_value(&conn.call(get("bin")).await.unwrap()), None);

        // Cas: success, mismatch with current value, expect-absent.
        let cas = |key: &str, absent: bool, expected: &str, new: &str| {
            let mut c = proto::Cas::new();
            c.key = b(key);
            c.expect_absent = absent;
            c.expected = b(expected);
            c.new_value = b(new);
            let mut r = Request::new();
            r.set_cas(c);
            r
        };
        assert!(
            conn.call(cas("a", false, "1", "2"))
                .await
                .unwrap()
                .has_cas()
        );
        let resp = conn.call(cas("a", false, "1", "3")).await.unwrap();
        let err = resp.error();
        assert_eq!(err.code.enum_value(), Ok(ErrorCode::COMPARE_FAILED));
        assert!(err.current_present);
        assert_eq!(err.current, b("2"));
        let resp = conn.call(cas("new", false, "x", "y")).await.unwrap();
        assert_eq!(
            resp.error().code.enum_value(),
            Ok(ErrorCode::COMPARE_FAILED)
        );
        assert!(!resp.error().current_present);
        assert!(
            conn.call(cas("new", true, "", "y"))
                .await
                .unwrap()
                .has_cas()
        );

        // Batch.
        let mut batch = proto::Batch::new();
        for (k, v) in [("p/1", "x"), ("p/2", "y"), ("p/3", "z"), ("q/1", "w")] {
            let mut p = proto::Put::new();
            p.key = b(k);
            p.value = b(v);
            let mut op = BatchOp::new();
            op.op = Some(batch_op::Op::Put(p));
            batch.ops.push(op);
        }
        let mut d = proto::Delete::new();
        d.key = b("new");
        let mut op = BatchOp::new();
        op.op = Some(batch_op::Op::Delete(d));
        batch.ops.push(op);
        let mut req = Request::new();
        req.set_batch(batch);
        assert!(conn.call(req).await.unwrap().has_batch());
        assert_eq!(get_value(&conn.call(get("new")).await.unwrap()), None);

        // Range: prefix + limit gives a page with `more`; keys_only; bounds.
        let mut range = proto::Range::new();
        range.prefix = b("p/");
        range.limit = 2;
        range.keys_only = true;
        let mut req = Request::new();
        req.set_range(range);
        let resp = conn.call(req).await.unwrap();
        let page = resp.range();
        assert!(page.more);
        let keys: Vec<_> = page.pairs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, vec![b("p/1"), b("p/2")]);
        assert!(page.pairs.iter().all(|kv| kv.value.is_empty()));
        let mut range = proto::Range::new();
        range.start = b("p/2");
        range.end = b("q/1");
        range.serializable = true;
        let mut req = Request::new();
        req.set_range(range);
        let resp = conn.call(req).await.unwrap();
        let pairs: Vec<_> = resp
            .range()
            .pairs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        assert_eq!(pairs, vec![(b("p/2"), b("y")), (b("p/3"), b("z"))]);
        assert!(!resp.range().more);

        // Status.
        let mut req = Request::new();
        req.set_status(proto::Status::new());
        let resp = conn.call(req).await.unwrap();
        let s = resp.status();
        assert_eq!(
            (
                s.node_id,
                s.role.enum_value(),
                s.term,
                s.leader_id,
                s.commit_index,
                s.applied_index
            ),
            (1, Ok(Role::ROLE_LEADER), 3, 1, 42, 41)
        );
        assert_eq!(s.leader_addr, "127.0.0.1:7001");

        // Typed not-leader error with the leader's id and address.
        let resp = conn.call(put("not-leader", "v")).await.unwrap();
        let err = resp.error();
        assert_eq!(err.code.enum_value(), Ok(ErrorCode::NOT_LEADER));
        assert_eq!(
            (err.leader_id, err.leader_addr.as_str()),
            (2, "127.0.0.1:7002")
        );

        // A request without a command is refused by the server itself.
        let resp = conn.call(Request::new()).await.unwrap();
        assert_eq!(
            resp.error().code.enum_value(),
            Ok(ErrorCode::INVALID_ARGUMENT)
        );

        assert_eq!(conn.pending(), 0);
        server.stop().await;
    })
    .await;
}
