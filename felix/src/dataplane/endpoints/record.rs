//! What twill-node remembers about each endpoint it set up, one JSON file
//! per endpoint in the state directory. A record is written only once the
//! endpoint is completely set up (atomically: temp file + rename), and
//! removed only after it is completely torn down, so on restart "has a
//! record" means "was handed to the runtime".

use std::path::{Path, PathBuf};

use crate::calc::endpoint::{EndpointKey, EndpointRecord};

/// The directory of endpoint records.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating) `dir/endpoints`.
    pub fn open(dir: &Path) -> std::io::Result<StateDir> {
        let dir = dir.join("endpoints");
        std::fs::create_dir_all(&dir)?;
        Ok(StateDir { dir })
    }

    fn file(&self, key: &EndpointKey) -> PathBuf {
        // Container IDs and interface names cannot contain '/', '_' is kept.
        self.dir
            .join(format!("{}__{}.json", key.container_id, key.ifname))
    }

    /// Writes a record atomically.
    pub fn save(&self, rec: &EndpointRecord) -> std::io::Result<()> {
        let path = self.file(&rec.key());
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, body)?;
        let f = std::fs::File::open(&tmp)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    }

    pub fn load(&self, key: &EndpointKey) -> std::io::Result<Option<EndpointRecord>> {
        match std::fs::read(self.file(key)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn remove(&self, key: &EndpointKey) -> std::io::Result<()> {
        match std::fs::remove_file(self.file(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes temp files of writes that never completed (a crash between
    /// write and rename). Only safe while no save is in progress: at start.
    pub fn clean_incomplete(&self) -> std::io::Result<usize> {
        let mut n = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("tmp") {
                std::fs::remove_file(&path)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Every record; unreadable files are reported, not fatal.
    pub fn all(&self) -> std::io::Result<(Vec<EndpointRecord>, Vec<String>)> {
        let mut recs = Vec::new();
        let mut bad = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    serde_json::from_slice::<EndpointRecord>(&b).map_err(|e| e.to_string())
                }) {
                Ok(r) => recs.push(r),
                Err(e) => bad.push(format!("{}: {e}", path.display())),
            }
        }
        recs.sort_by_key(|r| r.key());
        Ok((recs, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calc::endpoint::AddressRecord;
    use std::collections::BTreeMap;

    #[test]
    fn records_round_trip_and_incomplete_writes_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path()).unwrap();
        let rec = EndpointRecord {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/p".into(),
            host_ifname: "tw0000000000001".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
            addresses: vec![AddressRecord {
                addr: "10.0.0.1/32".parse().unwrap(),
                block: "10-0-0-0-26".into(),
                sequence: 1,
                borrowed: false,
            }],
            namespace: Some("default".into()),
            pod: Some("p".into()),
            labels: BTreeMap::new(),
            created: "2026-01-01T00:00:00Z".into(),
        };
        sd.save(&rec).unwrap();
        std::fs::write(dir.path().join("endpoints/c2__eth0.tmp"), b"{partial").unwrap();
        let (all, bad) = sd.all().unwrap();
        assert_eq!(all, vec![rec.clone()]);
        assert!(bad.is_empty());
        assert_eq!(sd.clean_incomplete().unwrap(), 1);
        assert!(!dir.path().join("endpoints/c2__eth0.tmp").exists());
        assert_eq!(sd.load(&rec.key()).unwrap(), Some(rec.clone()));
        sd.remove(&rec.key()).unwrap();
        sd.remove(&rec.key()).unwrap();
        assert_eq!(sd.load(&rec.key()).unwrap(), None);
    }
}
