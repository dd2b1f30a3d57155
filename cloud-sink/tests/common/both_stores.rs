//! Runs store tests on both backends: `both_stores!(test_a, test_b)` makes, for each async
//! `fn test_a<S: Store>(s: S)` of the including file, one test on SQLite (a fresh file in a
//! scratch folder) and one on PostgreSQL (a fresh schema, dropped afterwards) when
//! `FIVEZERO_TEST_POSTGRES` names a server; without it the PostgreSQL half prints
//! "skipped: FIVEZERO_TEST_POSTGRES not set" and passes.
//!
//! Include with `#[path = "common/both_stores.rs"] #[macro_use] mod both_stores;` and bring
//! `scratch`, `postgres_url`, `SqliteStore` and `PgStore` into the file's root.

#![allow(dead_code)] // Each test file uses its own part.

/// A fresh folder for one test.
pub(crate) fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fivezero-sink-store-{}-{name}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The PostgreSQL server of `FIVEZERO_TEST_POSTGRES`, if set.
pub(crate) fn postgres_url() -> Option<String> {
    std::env::var("FIVEZERO_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())
}

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = super::scratch(stringify!($name));
                    let store = super::SqliteStore::open(&dir.join("sink.db")).await.unwrap();
                    super::$name(store).await;
                    let _ = std::fs::remove_dir_all(&dir);
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(url) = super::postgres_url() else {
                        println!("skipped: FIVEZERO_TEST_POSTGRES not set");
                        return;
                    };
                    let schema = format!("fz_test_{:016x}", rand::random::<u64>());
                    let store = super::PgStore::open(&url, Some(&schema)).await.unwrap();
                    let outcome = tokio::spawn(super::$name(store)).await;
                    super::PgStore::drop_schema(&url, &schema).await.unwrap();
                    if let Err(e) = outcome {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            )*
        }
    };
}
