//! Store semantics, run against the embedded store (and, through the same
//! functions, any other backend).
use futures::StreamExt as _;

use super::*;

fn open() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
    (dir, store)
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

#[tokio::test]
async fn revisions_are_global_and_writes_are_compare_and_swap() {
    let (_d, s) = open();
    assert_eq!(s.current_revision().await.unwrap(), 0);
    let a = s
        .create("/core/services/default/a", b"1".to_vec())
        .await
        .unwrap();
    let b = s
        .create("/core/services/default/b", b"1".to_vec())
        .await
        .unwrap();
    assert_eq!((a.create_rev, a.mod_rev, b.mod_rev), (1, 1, 2));
    assert_eq!(
        s.create("/core/services/default/a", b"x".to_vec()).await,
        Err(Error::AlreadyExists {
            key: "/core/services/default/a".into()
        })
    );
    let a2 = s
        .update("/core/services/default/a", b"2".to_vec(), Some(1))
        .await
        .unwrap();
    assert_eq!((a2.create_rev, a2.mod_rev), (1, 3));
    assert_eq!(
        s.update("/core/services/default/a", b"3".to_vec(), Some(1))
            .await,
        Err(Error::Conflict {
            key: "/core/services/default/a".into(),
            expected: 1,
            actual: 3
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
    assert_eq!((gone.mod_rev, gone.value.as_slice()), (4, b"2".as_slice()));
    assert_eq!(s.get("/core/services/default/a").await.unwrap(), None);
    assert!(matches!(
        s.delete("/core/services/default/a", None).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        s.current_revision().await.unwrap(),
        4,
        "failed writes take no revision"
    );
}

#[tokio::test]
async fn lists_pages_under_a_prefix_only() {
    let (_d, s) = open();
    for ns in ["a", "b"] {
        for i in 0..5 {
            s.create(&format!("/core/services/{ns}/s{i}"), vec![])
                .await
                .unwrap();
        }
    }
    s.create("/core/servicesx/a/other", vec![]).await.unwrap();
    let all = s.list("/core/services/", None, None).await.unwrap();
    assert_eq!((all.items.len(), all.more, all.revision), (10, false, 11));
    let first = s.list("/core/services/a/", None, Some(3)).await.unwrap();
    assert_eq!(
        first
            .items
            .iter()
            .map(|kv| kv.key.as_str())
            .collect::<Vec<_>>(),
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

#[tokio::test]
async fn watch_replays_from_a_revision_then_follows_live_in_order() {
    let (_d, s) = open();
    s.create("/core/services/default/a", b"a1".to_vec())
        .await
        .unwrap();
    s.create("/core/pods/default/p", vec![]).await.unwrap();
    s.update("/core/services/default/a", b"a2".to_vec(), None)
        .await
        .unwrap();
    let mut w = s.watch("/core/services/", 1).await.unwrap();
    let e = next_event(&mut w).await;
    assert_eq!(
        (e.kind, e.revision(), e.kv.value.as_slice()),
        (EventKind::Put, 3, b"a2".as_slice())
    );
    assert!(!e.is_create());
    s.create("/core/services/default/b", vec![]).await.unwrap();
    s.create("/core/pods/default/q", vec![]).await.unwrap();
    s.delete("/core/services/default/a", None).await.unwrap();
    let e = next_event(&mut w).await;
    assert!(e.is_create() && e.revision() == 4);
    let e = next_event(&mut w).await;
    assert_eq!(
        (e.kind, e.revision(), e.kv.value.as_slice()),
        (EventKind::Delete, 6, b"a2".as_slice())
    );
}

#[tokio::test]
async fn compacted_revisions_cannot_be_watched() {
    let (_d, s) = open();
    for i in 0..10 {
        s.create(&format!("/k/{i}"), vec![]).await.unwrap();
    }
    s.compact(6).await.unwrap();
    assert_eq!(s.compacted_revision().await.unwrap(), 6);
    assert!(matches!(
        s.watch("/k/", 3).await,
        Err(Error::Compacted {
            requested: 3,
            oldest: 6
        })
    ));
    let mut w = s.watch("/k/", 6).await.unwrap();
    assert_eq!(next_event(&mut w).await.revision(), 7);
}

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
