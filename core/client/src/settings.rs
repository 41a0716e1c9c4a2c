//! The user's settings, kept in the state directory (`settings.json`), and
//! what is in force when they cannot be trusted.
//!
//! A missing file is the defaults. A file that cannot be read or parsed
//! is never taken as the defaults (that would open a machine whose user
//! chose lockdown): the runtime then holds the firewall closed — the
//! settings in force get `lockdown` — and says why, until the user sets
//! the settings again, which writes a whole new file. The host can hold
//! it closed for its own reason too (a network state file it cannot
//! read), until a tunnel comes up and the host knows its state again.
//!
//! What it does not do: apply anything (the platform does, from the
//! settings in force, at every state change).

use std::io::Write;
use std::path::{Path, PathBuf};

use hopwire_api::{Settings, SettingsChange};

pub const FILE: &str = "settings.json";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("settings file {path} is unreadable ({reason}); everything but the tunnel stays blocked until the settings are set again (`hopwire settings --reset`, or fix the file)")]
    Corrupt { path: PathBuf, reason: String },
    #[error("a DNS server must be a unicast address reached through the tunnel, not {0}")]
    BadDns(std::net::IpAddr),
}

/// The settings as saved, and whatever holds the firewall closed.
#[derive(Debug)]
pub struct SettingsState {
    path: PathBuf,
    saved: Settings,
    /// The file could not be read: why.
    unreadable: Option<String>,
    /// The host cannot tell what a previous run left: why.
    host_hold: Option<String>,
}

impl SettingsState {
    /// Reads `dir/settings.json`; an unreadable file holds the firewall
    /// closed rather than failing the start.
    pub fn load(dir: &Path) -> Self {
        let path = dir.join(FILE);
        let (saved, unreadable) = match std::fs::read_to_string(&path) {
            Ok(text) => match serde_json::from_str::<Settings>(&text) {
                Ok(s) => (s, None),
                Err(e) => (Settings::default(), Some(e.to_string())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Settings::default(), None),
            Err(e) => (Settings::default(), Some(e.to_string())),
        };
        let state = Self {
            path,
            saved,
            unreadable,
            host_hold: None,
        };
        if let Some(reason) = state.fail_closed() {
            tracing::error!("{reason}");
        }
        state
    }

    /// What is in force: the saved settings, with lockdown while anything
    /// holds the firewall closed.
    pub fn effective(&self) -> Settings {
        let mut s = self.saved.clone();
        if self.fail_closed().is_some() {
            s.lockdown = true;
        }
        s
    }

    /// Why the firewall is held closed whatever the state, if it is.
    pub fn fail_closed(&self) -> Option<String> {
        if let Some(reason) = &self.unreadable {
            return Some(
                SettingsError::Corrupt {
                    path: self.path.clone(),
                    reason: reason.clone(),
                }
                .to_string(),
            );
        }
        self.host_hold.clone()
    }

    pub fn hold_for_host(&mut self, reason: Option<String>) {
        self.host_hold = reason;
    }

    /// Applies `change` (to the defaults if the file was unreadable: the
    /// user now says what they want) and writes the file whole.
    pub fn change(&mut self, change: &SettingsChange) -> Result<Settings, SettingsError> {
        let base = if self.unreadable.is_some() {
            Settings::default()
        } else {
            self.saved.clone()
        };
        let next = change.apply(&base);
        if let Some(bad) = next
            .dns
            .iter()
            .find(|a| a.is_unspecified() || a.is_loopback() || a.is_multicast())
        {
            return Err(SettingsError::BadDns(*bad));
        }
        self.write(&next)?;
        self.saved = next;
        self.unreadable = None;
        Ok(self.effective())
    }

    /// Writes to a temporary file and renames it over the old one, so a
    /// crash leaves either the old settings or the new, never half.
    fn write(&self, settings: &Settings) -> Result<(), SettingsError> {
        let err = |source| SettingsError::Io {
            path: self.path.clone(),
            source,
        };
        let text = serde_json::to_string_pretty(settings).unwrap_or_else(|e| unreachable!("settings encode: {e}"));
        let tmp = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(err)?;
        file.write_all(text.as_bytes()).map_err(err)?;
        file.write_all(b"\n").map_err(err)?;
        file.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }
}

/// Reads the settings a daemon would start with, for a host's early boot
/// step that must block before the daemon runs: the effective settings
/// (lockdown if the file is unreadable).
pub fn effective_at_boot(dir: &Path) -> Settings {
    SettingsState::load(dir).effective()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hopwire-settings-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn missing_file_is_the_defaults_and_a_change_survives_a_reload() {
        let d = dir("roundtrip");
        let mut s = SettingsState::load(&d);
        assert_eq!(s.effective(), Settings::default());
        assert_eq!(s.fail_closed(), None);
        let change = SettingsChange {
            lockdown: Some(true),
            dns: Some(vec!["9.9.9.9".parse().expect("ip")]),
            ..SettingsChange::default()
        };
        s.change(&change).expect("saved");
        let again = SettingsState::load(&d);
        assert!(again.effective().lockdown);
        assert_eq!(again.effective().dns.len(), 1);
        assert!(!d.join("settings.json.tmp").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_corrupt_file_holds_the_firewall_closed_until_the_settings_are_set() {
        let d = dir("corrupt");
        std::fs::write(d.join(FILE), "{\"lockdown\": tru").expect("write");
        let mut s = SettingsState::load(&d);
        assert!(s.effective().lockdown, "unreadable settings fail closed");
        let why = s.fail_closed().expect("a reason");
        assert!(why.contains("settings.json") && why.contains("blocked"), "{why}");
        assert!(effective_at_boot(&d).lockdown, "the boot step blocks too");
        s.change(&SettingsChange::default()).expect("reset");
        assert_eq!(s.fail_closed(), None);
        assert!(!s.effective().lockdown, "reset to the defaults");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_host_can_hold_it_closed_and_bad_dns_is_refused() {
        let d = dir("host");
        let mut s = SettingsState::load(&d);
        s.hold_for_host(Some("network state unreadable".into()));
        assert!(s.effective().lockdown);
        s.hold_for_host(None);
        assert!(!s.effective().lockdown);
        let bad = SettingsChange {
            dns: Some(vec!["127.0.0.1".parse().expect("ip")]),
            ..SettingsChange::default()
        };
        assert!(matches!(s.change(&bad), Err(SettingsError::BadDns(_))));
        assert!(!d.join(FILE).exists(), "a refused change writes nothing");
        let _ = std::fs::remove_dir_all(&d);
    }
}
