//! Direct writes to the local Nix database (its SQLite file) for the one
//! thing Nix's own tools refuse: `lazix store down` takes the validity
//! away from paths whose files leave with the lazy mount even when local
//! paths reference them (`nix-store --delete` keeps any path that is
//! referenced or rooted), and `lazix realise` gives those references back
//! once the paths are valid again. Registering stays with Nix's tools
//! (`castore::nix::register`).
//!
//! Schema as Nix 2.x writes it: `ValidPaths(id, path, …)`, `Refs(referrer,
//! reference)` and `DerivationOutputs(drv, id, path)`, keyed by
//! `ValidPaths.id`. Every change is one transaction, so a killed `down`
//! leaves the database as it was or as it should be.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

/// A reference from a path that stays valid to one that `down` took
/// away, kept so `realise` can put it back.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CutReference {
    /// The referring path (stays valid).
    pub referrer: String,
    /// The referenced path (invalidated).
    pub reference: String,
}

/// The local Nix database.
pub struct NixDb {
    conn: Connection,
}

/// Nix's state folder: `NIX_STATE_DIR`, else `/nix/var/nix`.
pub fn state_dir() -> PathBuf {
    std::env::var_os("NIX_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/nix/var/nix"))
}

impl NixDb {
    /// Opens `STATE_DIR/db/db.sqlite`; `None` if there is none (no Nix
    /// installed, nothing to clean).
    pub fn open(state_dir: &Path) -> Result<Option<Self>> {
        let file = state_dir.join("db/db.sqlite");
        if !file.exists() {
            return Ok(None);
        }
        let conn = Connection::open(&file)
            .with_context(|| format!("opening the Nix database {}", file.display()))?;
        // Nix may be writing too: wait for its transactions, as it does.
        conn.busy_timeout(std::time::Duration::from_secs(60))?;
        conn.pragma_update(None, "foreign_keys", true)?;
        Ok(Some(Self { conn }))
    }

    /// Every path Nix holds as valid.
    pub fn valid_paths(&self) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare("select path from ValidPaths")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Makes `paths` invalid in one transaction, cutting the references
    /// other valid paths hold to them (returned, to be restored).
    pub fn invalidate(&mut self, paths: &[String]) -> Result<Vec<CutReference>> {
        let tx = self.conn.transaction()?;
        let mut ids: HashMap<i64, String> = HashMap::new();
        for p in paths {
            let id: Option<i64> = tx
                .query_row("select id from ValidPaths where path = ?1", [p], |r| {
                    r.get(0)
                })
                .optional()?;
            if let Some(id) = id {
                ids.insert(id, p.clone());
            }
        }
        let mut cut = Vec::new();
        {
            let mut referrers = tx.prepare(
                "select r.referrer, v.path from Refs r join ValidPaths v on v.id = r.referrer \
                 where r.reference = ?1",
            )?;
            for (id, path) in &ids {
                let rows = referrers
                    .query_map([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
                for row in rows {
                    let (referrer_id, referrer) = row?;
                    if !ids.contains_key(&referrer_id) {
                        cut.push(CutReference {
                            referrer,
                            reference: path.clone(),
                        });
                    }
                }
            }
        }
        for id in ids.keys() {
            tx.execute("delete from Refs where reference = ?1", [id])?;
        }
        for id in ids.keys() {
            tx.execute("delete from Refs where referrer = ?1", [id])?;
            tx.execute("delete from DerivationOutputs where drv = ?1", [id])?;
            tx.execute("delete from ValidPaths where id = ?1", [id])?;
        }
        tx.commit()?;
        cut.sort_by(|a, b| (&a.referrer, &a.reference).cmp(&(&b.referrer, &b.reference)));
        Ok(cut)
    }

    /// Puts back the references in `cut` whose two ends are valid again;
    /// returns the ones still waiting.
    pub fn restore(&mut self, cut: &[CutReference]) -> Result<Vec<CutReference>> {
        let tx = self.conn.transaction()?;
        let mut waiting = Vec::new();
        for c in cut {
            let id = |p: &str| -> rusqlite::Result<Option<i64>> {
                tx.query_row("select id from ValidPaths where path = ?1", [p], |r| {
                    r.get(0)
                })
                .optional()
            };
            match (id(&c.referrer)?, id(&c.reference)?) {
                (Some(a), Some(b)) => {
                    tx.execute(
                        "insert or ignore into Refs (referrer, reference) values (?1, ?2)",
                        params![a, b],
                    )?;
                }
                // The referrer is gone for good: nothing to put back.
                (None, _) => {}
                (Some(_), None) => waiting.push(c.clone()),
            }
        }
        tx.commit()?;
        Ok(waiting)
    }
}

/// The cut references kept in `file` (JSON lines; none if absent).
pub fn load_cut(file: &Path) -> Result<Vec<CutReference>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("a line of {}", file.display())))
        .collect()
}

/// Writes `cut` to `file` (replacing it; removed when empty), atomically.
pub fn save_cut(file: &Path, cut: &[CutReference]) -> Result<()> {
    if cut.is_empty() {
        return match std::fs::remove_file(file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        };
    }
    let mut text = String::new();
    for c in cut {
        text.push_str(&serde_json::to_string(c)?);
        text.push('\n');
    }
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database with Nix's tables (as `local-store.cc` creates them).
    fn nix_db(dir: &Path) -> NixDb {
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let conn = Connection::open(dir.join("db/db.sqlite")).unwrap();
        conn.execute_batch(
            "create table ValidPaths (id integer primary key autoincrement not null,
               path text unique not null, hash text not null, registrationTime integer not null,
               deriver text, narSize integer, ultimate integer, sigs text, ca text);
             create table Refs (referrer integer not null, reference integer not null,
               primary key (referrer, reference),
               foreign key (referrer) references ValidPaths(id) on delete cascade,
               foreign key (reference) references ValidPaths(id) on delete restrict);
             create table DerivationOutputs (drv integer not null, id text not null,
               path text not null, primary key (drv, id),
               foreign key (drv) references ValidPaths(id) on delete cascade);",
        )
        .unwrap();
        drop(conn);
        NixDb::open(dir).unwrap().unwrap()
    }

    fn add(db: &NixDb, path: &str, refs: &[&str]) {
        db.conn
            .execute(
                "insert into ValidPaths (path, hash, registrationTime) values (?1, 'h', 1)",
                [path],
            )
            .unwrap();
        for r in refs {
            db.conn
                .execute(
                    "insert into Refs select a.id, b.id from ValidPaths a, ValidPaths b \
                     where a.path = ?1 and b.path = ?2",
                    [path, r],
                )
                .unwrap();
        }
    }

    fn refs_of(db: &NixDb, path: &str) -> Vec<String> {
        let mut stmt = db
            .conn
            .prepare(
                "select b.path from Refs r join ValidPaths a on a.id = r.referrer \
                 join ValidPaths b on b.id = r.reference where a.path = ?1 order by b.path",
            )
            .unwrap();
        let rows = stmt.query_map([path], |r| r.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn referenced_paths_are_invalidated_and_their_references_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = nix_db(dir.path());
        add(&db, "/nix/store/lib", &[]);
        add(
            &db,
            "/nix/store/tool",
            &["/nix/store/lib", "/nix/store/tool"],
        );
        add(
            &db,
            "/nix/store/built",
            &["/nix/store/tool", "/nix/store/built"],
        );
        let cut = db
            .invalidate(&["/nix/store/tool".into(), "/nix/store/lib".into()])
            .unwrap();
        assert_eq!(
            cut,
            vec![CutReference {
                referrer: "/nix/store/built".into(),
                reference: "/nix/store/tool".into()
            }]
        );
        assert_eq!(db.valid_paths().unwrap(), vec!["/nix/store/built"]);
        assert_eq!(refs_of(&db, "/nix/store/built"), vec!["/nix/store/built"]);

        let file = dir.path().join("cut");
        save_cut(&file, &cut).unwrap();
        let cut = load_cut(&file).unwrap();
        // Not back yet: the reference waits.
        assert_eq!(db.restore(&cut).unwrap(), cut);
        add(&db, "/nix/store/lib", &[]);
        add(&db, "/nix/store/tool", &["/nix/store/lib"]);
        assert!(db.restore(&cut).unwrap().is_empty());
        assert_eq!(
            refs_of(&db, "/nix/store/built"),
            vec!["/nix/store/built", "/nix/store/tool"]
        );
        save_cut(&file, &[]).unwrap();
        assert!(!file.exists());
    }
}
