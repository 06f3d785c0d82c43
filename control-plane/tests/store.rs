//! Store semantics, run against the embedded store and against a real etcd
//! (Debian's `etcd-server`, started on loopback per test).
mod common;

use std::sync::Arc;

use common::EtcdProcess;
use control_plane::store::*;
use futures::StreamExt as _;

fn embedded() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    (dir, store)
}

async fn etcd() -> (EtcdProcess, EtcdStore) {
    let p = common::etcd();
    let s = EtcdStore::connect(std::slice::from_ref(&p.endpoint), "/switchyard-test")
        .await
        .unwrap();
    (p, s)
}

/// The next event, skipping progress markers.
async fn next_event(s: &mut EventStream) -> Arc<Event> {
    loop {
        let item = tokio::time::timeout(std::time::Duration::from_secs(5), s.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("no error");
        if let WatchItem::Event(e) = item {
            return e;
        }
    }
}

async fn revisions_are_global_and_writes_are_compare_and_swap(s: &impl Store) {
    let base = s.current_revision().await.unwrap();
    let a = s
        .create("/core/services/default/a", b"1".to_vec())
        .await
        .unwrap();
    let b = s
        .create("/core/services/default/b", b"1".to_vec())
        .await
        .unwrap();
    assert_eq!(
        (a.create_rev, a.mod_rev, b.mod_rev),
        (base + 1, base + 1, base + 2)
    );
    assert_eq!(
        s.create("/core/services/default/a", b"x".to_vec()).await,
        Err(Error::AlreadyExists {
            key: "/core/services/default/a".into()
        })
    );
    let a2 = s
        .update("/core/services/default/a", b"2".to_vec(), Some(base + 1))
        .await
        .unwrap();
    assert_eq!((a2.create_rev, a2.mod_rev), (base + 1, base + 3));
    assert_eq!(
        s.update("/core/services/default/a", b"3".to_vec(), Some(base + 1))
            .await,
        Err(Error::Conflict {
            key: "/core/services/default/a".into(),
            expected: base + 1,
            actual: base + 3
        })
    );
    assert_eq!(
        s.get("/core/services/default/a")
            .await
            .unwrap()
            .unwrap()
            .value,
        b"2"
    );
    let gone = s.delete("/core/services/default/a", None).await.unwrap();
    assert_eq!(
        (gone.mod_rev, gone.value.as_slice()),
        (base + 4, b"2".as_slice())
    );
    assert_eq!(s.get("/core/services/default/a").await.unwrap(), None);
    assert!(matches!(
        s.delete("/core/services/default/a", None).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        s.update("/core/services/default/a", vec![], None).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        s.current_revision().await.unwrap(),
        base + 4,
        "failed writes take no revision"
    );
}

async fn lists_pages_under_a_prefix_only(s: &impl Store) {
    let base = s.current_revision().await.unwrap();
    for ns in ["a", "b"] {
        for i in 0..5 {
            s.create(&format!("/core/services/{ns}/s{i}"), vec![])
                .await
                .unwrap();
        }
    }
    s.create("/core/servicesx/a/other", vec![]).await.unwrap();
    let all = s.list("/core/services/", None, None).await.unwrap();
    assert_eq!(
        (all.items.len(), all.more, all.revision),
        (10, false, base + 11)
    );
    let first = s.list("/core/services/a/", None, Some(3)).await.unwrap();
    let keys: Vec<_> = first.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "/core/services/a/s0",
            "/core/services/a/s1",
            "/core/services/a/s2"
        ]
    );
    assert!(first.more);
    let rest = s
        .list("/core/services/a/", Some("/core/services/a/s2"), Some(3))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 2);
    assert!(!rest.more);
}

async fn watch_replays_from_a_revision_then_follows_live_in_order(s: &impl Store) {
    let base = s.current_revision().await.unwrap();
    s.create("/core/services/default/a", b"a1".to_vec())
        .await
        .unwrap();
    s.create("/core/pods/default/p", vec![]).await.unwrap();
    s.update("/core/services/default/a", b"a2".to_vec(), None)
        .await
        .unwrap();
    let mut w = s.watch("/core/services/", base + 1).await.unwrap();
    let e = next_event(&mut w).await;
    assert_eq!(
        (e.kind, e.revision(), e.kv.value.as_slice()),
        (EventKind::Put, base + 3, b"a2".as_slice())
    );
    assert!(!e.is_create());
    assert_eq!(
        e.prev_value.as_deref(),
        Some(b"a1".as_slice()),
        "updates carry the value they replaced"
    );
    s.create("/core/services/default/b", vec![]).await.unwrap();
    s.create("/core/pods/default/q", vec![]).await.unwrap();
    s.delete("/core/services/default/a", None).await.unwrap();
    let e = next_event(&mut w).await;
    assert!(e.is_create() && e.revision() == base + 4);
    let e = next_event(&mut w).await;
    assert_eq!(
        (e.kind, e.revision(), e.kv.value.as_slice()),
        (EventKind::Delete, base + 6, b"a2".as_slice())
    );
    assert_eq!(e.kv.key, "/core/services/default/a");
}

async fn compacted_revisions_cannot_be_watched(s: &impl Store) {
    let base = s.current_revision().await.unwrap();
    for i in 0..10 {
        s.create(&format!("/k/{i}"), vec![]).await.unwrap();
    }
    s.compact(base + 6).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), base + 6);
    let refusal = match s.watch("/k/", base + 3).await {
        Err(e) => e,
        Ok(mut stream) => tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("an answer in time")
            .expect("an item")
            .expect_err("the first item is the refusal"),
    };
    assert_eq!(
        refusal,
        Error::Compacted {
            requested: base + 3,
            oldest: base + 6
        }
    );
    let mut w = s.watch("/k/", base + 6).await.unwrap();
    assert_eq!(next_event(&mut w).await.revision(), base + 7);
}

async fn lists_larger_than_a_grpc_message_come_whole(s: &impl Store) {
    // 60 values of 100 KiB: 6 MiB, over gRPC's 4 MiB response cap.
    let big = vec![b'x'; 100 * 1024];
    for i in 0..60 {
        s.create(&format!("/big/{i:02}"), big.clone())
            .await
            .unwrap();
    }
    let all = s.list("/big/", None, None).await.unwrap();
    assert_eq!((all.items.len(), all.more), (60, false));
    let some = s.list("/big/", Some("/big/09"), Some(25)).await.unwrap();
    assert_eq!((some.items.len(), some.more), (25, true));
    assert_eq!(some.items[0].key, "/big/10");
}

/// A list at an older revision sees the keys as they were: updated ones with
/// their old values and revisions, deleted ones back, later ones absent.
async fn lists_read_old_revisions(s: &impl Store) {
    let k = |n: &str| format!("/core/configmaps/old/{n}");
    let a = s.create(&k("a"), b"a1".to_vec()).await.unwrap();
    let b = s.create(&k("b"), b"b1".to_vec()).await.unwrap();
    s.create(&k("c"), b"c1".to_vec()).await.unwrap();
    let at = s.current_revision().await.unwrap();
    s.update(&k("a"), b"a2".to_vec(), None).await.unwrap();
    s.delete(&k("b"), None).await.unwrap();
    s.create(&k("d"), b"d1".to_vec()).await.unwrap();
    s.delete(&k("c"), None).await.unwrap();
    s.create(&k("c"), b"c2".to_vec()).await.unwrap();
    let then = s
        .list_at("/core/configmaps/old/", None, None, at)
        .await
        .unwrap();
    let seen: Vec<_> = then
        .items
        .iter()
        .map(|kv| {
            (
                kv.key.rsplit('/').next().unwrap().to_owned(),
                kv.value.clone(),
                kv.mod_rev,
            )
        })
        .collect();
    assert_eq!(then.revision, at);
    assert_eq!(
        seen,
        [
            ("a".to_owned(), b"a1".to_vec(), a.mod_rev),
            ("b".to_owned(), b"b1".to_vec(), b.mod_rev),
            ("c".to_owned(), b"c1".to_vec(), at)
        ]
    );
    let page = s
        .list_at("/core/configmaps/old/", Some(&k("a")), Some(1), at)
        .await
        .unwrap();
    assert_eq!(
        (page.items[0].key.as_str(), page.more),
        (k("b").as_str(), true)
    );
    let now = s.current_revision().await.unwrap();
    assert_eq!(
        s.list_at("/core/configmaps/old/", None, None, now + 5)
            .await,
        Err(Error::FutureRevision {
            requested: now + 5,
            current: now
        })
    );
    s.compact(now).await.unwrap();
    assert!(matches!(
        s.list_at("/core/configmaps/old/", None, None, at).await,
        Err(Error::Compacted { requested, .. }) if requested == at
    ));
    assert_eq!(
        s.list_at("/core/configmaps/old/", None, None, now)
            .await
            .unwrap()
            .items
            .len(),
        3,
        "the compacted revision itself is still readable"
    );
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_embedded {
            $(#[tokio::test] async fn $name() { let (_d, s) = super::embedded(); super::$name(&s).await })*
        }
        mod on_etcd {
            $(#[tokio::test] async fn $name() { let (_p, s) = super::etcd().await; super::$name(&s).await })*
        }
    };
}

on_both_backends!(
    revisions_are_global_and_writes_are_compare_and_swap,
    lists_pages_under_a_prefix_only,
    watch_replays_from_a_revision_then_follows_live_in_order,
    compacted_revisions_cannot_be_watched,
    lists_larger_than_a_grpc_message_come_whole,
    lists_read_old_revisions,
);

#[tokio::test]
async fn committed_writes_and_the_revision_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    {
        let s = EmbeddedStore::open(&path).unwrap();
        s.create("/k/a", b"1".to_vec()).await.unwrap();
        s.update("/k/a", b"2".to_vec(), None).await.unwrap();
    }
    let s = EmbeddedStore::open(&path).unwrap();
    assert_eq!(s.current_revision().await.unwrap(), 2);
    assert_eq!(s.get("/k/a").await.unwrap().unwrap().value, b"2");
    assert_eq!(
        s.create("/k/b", vec![]).await.unwrap().mod_rev,
        3,
        "revisions continue"
    );
    let mut w = s.watch("/k/", 0).await.unwrap();
    assert_eq!(
        next_event(&mut w).await.revision(),
        1,
        "the log survives too"
    );
}
