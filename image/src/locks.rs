//! Named async locks: one download per blob, one unpack per chain id, one pull per
//! reference at a time. Waiters of a finished holder find the work done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::OwnedMutexGuard;

#[derive(Debug, Default)]
pub(crate) struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// Waits for and takes the lock named `key`. Dropping the guard (also when the
    /// holder's future is cancelled) releases it.
    pub(crate) async fn lock(&self, key: String) -> OwnedMutexGuard<()> {
        let mutex = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(&key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key, Arc::downgrade(&m));
                    m
                }
            }
        };
        mutex.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn same_key_is_exclusive_and_other_keys_are_not() {
        let locks = Arc::new(KeyedLocks::default());
        let g = locks.lock("a".into()).await;
        // Another key is free.
        let _b = tokio::time::timeout(Duration::from_secs(1), locks.lock("b".into()))
            .await
            .expect("other key must not block");
        // The same key waits until the guard is dropped.
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move { l2.lock("a".into()).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(g);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("released lock must be taken")
            .unwrap();
    }
}
