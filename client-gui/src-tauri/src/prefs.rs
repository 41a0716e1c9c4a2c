//! What the app remembers between runs (its own choices, not the
//! daemon's settings): the connect screen's exit country, hop count and
//! price cap, in `$XDG_CONFIG_HOME/hopwire/app.json`; and whether the app
//! starts with the session, as an XDG autostart entry
//! (`$XDG_CONFIG_HOME/autostart/hopwire.desktop`), which every Linux
//! desktop honours.

use std::path::{Path, PathBuf};

use crate::daemon::{ConnectChoice, GuiError};

/// The app's config directory root (`$XDG_CONFIG_HOME`, else `~/.config`).
pub fn config_home() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from(".config"))
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> GuiError {
    GuiError {
        kind: "internal".into(),
        message: format!("{}: {e}", path.display()),
    }
}

/// The remembered connect choice; none saved is the defaults.
pub fn load_choice(home: &Path) -> ConnectChoice {
    let path = home.join("hopwire").join("app.json");
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

pub fn save_choice(home: &Path, choice: &ConnectChoice) -> Result<(), GuiError> {
    let dir = home.join("hopwire");
    let path = dir.join("app.json");
    std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    let text = serde_json::to_string_pretty(choice).map_err(|e| io_error(&path, e))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| io_error(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))
}

fn autostart_entry(home: &Path) -> PathBuf {
    home.join("autostart").join("hopwire.desktop")
}

pub fn autostart(home: &Path) -> bool {
    autostart_entry(home).exists()
}

/// Starts the app (`exe`, hidden in the tray) with the session, or not.
pub fn set_autostart(home: &Path, on: bool, exe: &Path) -> Result<(), GuiError> {
    let entry = autostart_entry(home);
    if !on {
        return match std::fs::remove_file(&entry) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(&entry, e)),
            _ => Ok(()),
        };
    }
    let dir = entry.parent().unwrap_or(home);
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let text = format!(
        "[Desktop Entry]\nType=Application\nName=Hopwire\nComment=Peer-to-peer VPN\nExec=\"{}\" --hidden\nIcon=hopwire\nTerminal=false\nX-GNOME-Autostart-enabled=true\n",
        exe.display()
    );
    std::fs::write(&entry, text).map_err(|e| io_error(&entry, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_choice_and_autostart_survive_a_restart() {
        let home = std::env::temp_dir().join(format!("hopwire-gui-prefs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&home);
        assert_eq!(load_choice(&home), ConnectChoice::default());
        let choice = ConnectChoice {
            country: Some("DE".into()),
            hops: Some(2),
            max_price: Some(3_000_000),
        };
        save_choice(&home, &choice).expect("saved");
        assert_eq!(load_choice(&home), choice);
        assert!(!autostart(&home));
        set_autostart(&home, true, Path::new("/usr/bin/hopwire-gui")).expect("on");
        assert!(autostart(&home));
        let entry = std::fs::read_to_string(home.join("autostart/hopwire.desktop")).expect("entry");
        assert!(entry.contains("Exec=\"/usr/bin/hopwire-gui\" --hidden"), "{entry}");
        set_autostart(&home, false, Path::new("/usr/bin/hopwire-gui")).expect("off");
        assert!(!autostart(&home));
        let _ = std::fs::remove_dir_all(&home);
    }
}
