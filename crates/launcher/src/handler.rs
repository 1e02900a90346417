//! Registering the launcher as the current user's `winbox://` handler, with no
//! administrator rights: a `.desktop` file and `xdg-mime` on Linux, HKCU registry keys
//! (a `.reg` file given to `reg.exe import`) on Windows, an app bundle whose Info.plist
//! declares the URL type on macOS. The texts are made by plain functions, tested here on
//! any platform; only the few calls that write them for one platform sit behind `cfg`.

use std::path::{Path, PathBuf};

/// The desktop entry's file name (Linux).
pub const DESKTOP_FILE: &str = "postern-winbox.desktop";
/// The URL scheme's MIME type (Linux).
pub const SCHEME_MIME: &str = "x-scheme-handler/winbox";
/// The app bundle's name (macOS).
pub const BUNDLE_NAME: &str = "Postern WinBox Launcher.app";
/// The app bundle's identifier (macOS).
pub const BUNDLE_ID: &str = "org.postern.winbox-launcher";

/// Why installing or uninstalling failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot tell where the launcher itself is: {0}")]
    SelfPath(String),
    #[error(
        "the launcher's path {0} cannot be written into a handler (it holds a line break or a quote)"
    )]
    UnsafePath(String),
    #[error("{0} is not set, so there is no user directory to install into")]
    NoHome(&'static str),
    #[error("cannot write {0}: {1}")]
    Write(String, String),
    #[error("{0} failed: {1}")]
    Tool(String, String),
}

/// The arguments the handler runs the launcher with, before the link.
pub fn handler_args(lab: bool) -> &'static [&'static str] {
    if lab {
        &["open", "--lab", "--"]
    } else {
        &["open", "--"]
    }
}

/// Quotes one argument for a desktop entry's `Exec` key (the Desktop Entry
/// Specification's rules: double quotes, with `"`, `` ` ``, `$` and `\` escaped by a
/// backslash, then every backslash doubled again by the string escaping of the key's
/// value, and `%` written `%%`).
fn desktop_quote(arg: &str) -> String {
    let mut out = String::from("\"");
    for c in arg.chars() {
        match c {
            '"' | '`' | '$' => {
                out.push_str("\\\\");
                out.push(c);
            }
            '\\' => out.push_str("\\\\\\\\"),
            '%' => out.push_str("%%"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The desktop entry that hands `winbox://` links to `exe`.
pub fn desktop_entry(exe: &str, lab: bool) -> Result<String, InstallError> {
    if exe.contains(['\n', '\r']) {
        return Err(InstallError::UnsafePath(exe.to_owned()));
    }
    let args = handler_args(lab).join(" ");
    Ok(format!(
        "[Desktop Entry]\n\
         Type=Application\n\
         Name=Postern WinBox launcher\n\
         Comment=Opens winbox:// links from Postern in WinBox\n\
         Exec={} {args} %u\n\
         Terminal=false\n\
         NoDisplay=true\n\
         MimeType={SCHEME_MIME};\n",
        desktop_quote(exe)
    ))
}

/// `mimeapps.list` with the `winbox` scheme's default set to this launcher.
pub fn mimeapps_with(existing: &str) -> String {
    let mut out = String::new();
    let mut in_defaults = false;
    let mut written = false;
    for line in existing.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            if in_defaults && !written {
                out.push_str(&format!("{SCHEME_MIME}={DESKTOP_FILE}\n"));
                written = true;
            }
            in_defaults = trimmed == "[Default Applications]";
        } else if in_defaults && trimmed.starts_with(&format!("{SCHEME_MIME}=")) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !written {
        if !in_defaults {
            if !out.is_empty() && !out.ends_with("\n\n") {
                out.push('\n');
            }
            out.push_str("[Default Applications]\n");
        }
        out.push_str(&format!("{SCHEME_MIME}={DESKTOP_FILE}\n"));
    }
    out
}

/// `mimeapps.list` without this launcher as the `winbox` scheme's default (another
/// program's entry is left alone).
pub fn mimeapps_without(existing: &str) -> String {
    let ours = format!("{SCHEME_MIME}={DESKTOP_FILE}");
    existing
        .lines()
        .filter(|line| line.trim() != ours)
        .map(|line| format!("{line}\n"))
        .collect()
}

/// A string value of a `.reg` file: backslashes and quotes escaped.
fn reg_string(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The registry entries (a `.reg` file's text) that make `exe` the current user's
/// `winbox://` handler under `HKEY_CURRENT_USER\Software\Classes`.
pub fn registry_install(exe: &str, lab: bool) -> Result<String, InstallError> {
    if exe.contains(['\n', '\r', '"']) {
        return Err(InstallError::UnsafePath(exe.to_owned()));
    }
    let command = format!("\"{exe}\" {} \"%1\"", handler_args(lab).join(" "));
    Ok(format!(
        "Windows Registry Editor Version 5.00\r\n\
         \r\n\
         [HKEY_CURRENT_USER\\Software\\Classes\\winbox]\r\n\
         @=\"URL:WinBox link (Postern)\"\r\n\
         \"URL Protocol\"=\"\"\r\n\
         \r\n\
         [HKEY_CURRENT_USER\\Software\\Classes\\winbox\\DefaultIcon]\r\n\
         @=\"{},0\"\r\n\
         \r\n\
         [HKEY_CURRENT_USER\\Software\\Classes\\winbox\\shell\\open\\command]\r\n\
         @=\"{}\"\r\n",
        reg_string(exe),
        reg_string(&command)
    ))
}

/// The `.reg` text that removes the handler again.
pub fn registry_uninstall() -> String {
    "Windows Registry Editor Version 5.00\r\n\r\n[-HKEY_CURRENT_USER\\Software\\Classes\\winbox]\r\n"
        .to_owned()
}

/// A `.reg` file as `reg.exe import` reads it: UTF-16LE with a byte-order mark.
pub fn utf16le(text: &str) -> Vec<u8> {
    let mut out = vec![0xff, 0xfe];
    for unit in text.encode_utf16() {
        out.extend_from_slice(&unit.to_le_bytes());
    }
    out
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The app bundle's Info.plist (macOS): an AppleScript applet (`osacompile`'s
/// `applet` executable, which hands the URL to its script's `open location` handler)
/// that declares the `winbox` URL scheme and stays out of the Dock.
pub fn info_plist(version: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
	<key>CFBundleExecutable</key>
	<string>applet</string>
	<key>CFBundleIconFile</key>
	<string>applet</string>
	<key>CFBundleIdentifier</key>
	<string>{BUNDLE_ID}</string>
	<key>CFBundleInfoDictionaryVersion</key>
	<string>6.0</string>
	<key>CFBundleName</key>
	<string>Postern WinBox Launcher</string>
	<key>CFBundlePackageType</key>
	<string>APPL</string>
	<key>CFBundleSignature</key>
	<string>aplt</string>
	<key>CFBundleShortVersionString</key>
	<string>{}</string>
	<key>LSUIElement</key>
	<true/>
	<key>CFBundleURLTypes</key>
	<array>
		<dict>
			<key>CFBundleURLName</key>
			<string>WinBox link</string>
			<key>CFBundleURLSchemes</key>
			<array>
				<string>winbox</string>
			</array>
		</dict>
	</array>
</dict>
</plist>
"#,
        xml_escape(version)
    )
}

/// An AppleScript string literal.
fn applescript_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The applet's script (macOS): hands each `winbox://` link to the launcher. macOS
/// delivers a link to an app as an Apple Event, not as an argument, so a script is
/// what receives it; both the launcher's path and the link are quoted for the shell
/// `do shell script` runs (the link was not checked yet: the launcher does that).
pub fn applescript(exe: &str, lab: bool) -> Result<String, InstallError> {
    if exe.contains(['\n', '\r']) {
        return Err(InstallError::UnsafePath(exe.to_owned()));
    }
    let args = handler_args(lab).join(" ");
    Ok(format!(
        "on open location theLink\n\
         \tdo shell script quoted form of {} & \" {args} \" & quoted form of theLink\n\
         end open location\n",
        applescript_string(exe)
    ))
}

/// The launcher's own path, as the handler will run it.
pub fn self_path() -> Result<PathBuf, InstallError> {
    let exe = std::env::current_exe().map_err(|e| InstallError::SelfPath(e.to_string()))?;
    Ok(exe.canonicalize().unwrap_or(exe))
}

fn write(path: &Path, contents: &[u8]) -> Result<(), InstallError> {
    let fail = |e: std::io::Error| InstallError::Write(path.display().to_string(), e.to_string());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    std::fs::write(path, contents).map_err(fail)
}

/// Runs a helper program (never through a shell); its failure is reported.
#[cfg_attr(windows, allow(dead_code))]
fn run_tool(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), InstallError> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| InstallError::Tool(program.to_owned(), e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        let words = String::from_utf8_lossy(&out.stderr);
        let line = words.lines().next().unwrap_or("it exited with an error");
        Err(InstallError::Tool(program.to_owned(), line.to_owned()))
    }
}

/// Where the handler went, for the launcher to say.
#[derive(Debug)]
pub struct Installed(pub PathBuf);

/// XDG directories: `$XDG_DATA_HOME` or `~/.local/share`, `$XDG_CONFIG_HOME` or `~/.config`.
#[cfg(not(any(windows, target_os = "macos")))]
fn xdg_dir(var: &str, fallback: &[&str]) -> Result<PathBuf, InstallError> {
    if let Some(dir) = std::env::var_os(var).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(InstallError::NoHome("HOME"))?;
    let mut dir = PathBuf::from(home);
    dir.extend(fallback);
    Ok(dir)
}

/// Linux (and other XDG desktops): the desktop entry, then `xdg-mime default` (or, with
/// no `xdg-mime`, the `mimeapps.list` line it would write).
#[cfg(not(any(windows, target_os = "macos")))]
pub fn install(lab: bool) -> Result<Installed, InstallError> {
    let exe = self_path()?;
    let apps = xdg_dir("XDG_DATA_HOME", &[".local", "share"])?.join("applications");
    let entry = apps.join(DESKTOP_FILE);
    write(
        &entry,
        desktop_entry(&exe.to_string_lossy(), lab)?.as_bytes(),
    )?;
    let set = run_tool(
        "xdg-mime",
        &[
            "default".as_ref(),
            DESKTOP_FILE.as_ref(),
            SCHEME_MIME.as_ref(),
        ],
    );
    if let Err(InstallError::Tool(..)) = set {
        let list = xdg_dir("XDG_CONFIG_HOME", &[".config"])?.join("mimeapps.list");
        let existing = std::fs::read_to_string(&list).unwrap_or_default();
        write(&list, mimeapps_with(&existing).as_bytes())?;
    }
    // Desktops that cache handlers read them again; its absence is harmless.
    let _ = run_tool("update-desktop-database", &[apps.as_os_str()]);
    Ok(Installed(entry))
}

#[cfg(not(any(windows, target_os = "macos")))]
pub fn uninstall() -> Result<Installed, InstallError> {
    let apps = xdg_dir("XDG_DATA_HOME", &[".local", "share"])?.join("applications");
    let entry = apps.join(DESKTOP_FILE);
    match std::fs::remove_file(&entry) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(InstallError::Write(
                entry.display().to_string(),
                e.to_string(),
            ));
        }
    }
    let list = xdg_dir("XDG_CONFIG_HOME", &[".config"])?.join("mimeapps.list");
    if let Ok(existing) = std::fs::read_to_string(&list) {
        write(&list, mimeapps_without(&existing).as_bytes())?;
    }
    let _ = run_tool("update-desktop-database", &[apps.as_os_str()]);
    Ok(Installed(entry))
}

/// Windows: the registry entries under HKCU, imported by `reg.exe` (no administrator
/// rights needed for the current user's classes).
#[cfg(windows)]
pub fn install(lab: bool) -> Result<Installed, InstallError> {
    let exe = self_path()?;
    reg_import(&registry_install(&exe.to_string_lossy(), lab)?)?;
    Ok(Installed(PathBuf::from(
        r"HKEY_CURRENT_USER\Software\Classes\winbox",
    )))
}

#[cfg(windows)]
pub fn uninstall() -> Result<Installed, InstallError> {
    reg_import(&registry_uninstall())?;
    Ok(Installed(PathBuf::from(
        r"HKEY_CURRENT_USER\Software\Classes\winbox",
    )))
}

#[cfg(windows)]
fn reg_import(text: &str) -> Result<(), InstallError> {
    let file = std::env::temp_dir().join(format!("postern-winbox-{}.reg", std::process::id()));
    write(&file, &utf16le(text))?;
    let result = run_tool("reg.exe", &["import".as_ref(), file.as_os_str()]);
    let _ = std::fs::remove_file(&file);
    result
}

/// macOS: `~/Applications/Postern WinBox Launcher.app`, an applet compiled by
/// `osacompile` from [`applescript`], given [`info_plist`], signed ad hoc again (its
/// Info.plist changed) and registered with Launch Services.
#[cfg(target_os = "macos")]
pub fn install(lab: bool) -> Result<Installed, InstallError> {
    let exe = self_path()?;
    let bundle = macos_bundle()?;
    let _ = std::fs::remove_dir_all(&bundle);
    let script =
        std::env::temp_dir().join(format!("postern-winbox-{}.applescript", std::process::id()));
    write(
        &script,
        applescript(&exe.to_string_lossy(), lab)?.as_bytes(),
    )?;
    let compiled = run_tool(
        "osacompile",
        &["-o".as_ref(), bundle.as_os_str(), script.as_os_str()],
    );
    let _ = std::fs::remove_file(&script);
    compiled?;
    write(
        &bundle.join("Contents").join("Info.plist"),
        info_plist(env!("CARGO_PKG_VERSION")).as_bytes(),
    )?;
    let _ = run_tool(
        "codesign",
        &[
            "--force".as_ref(),
            "--sign".as_ref(),
            "-".as_ref(),
            bundle.as_os_str(),
        ],
    );
    run_tool(LSREGISTER, &["-f".as_ref(), bundle.as_os_str()])?;
    Ok(Installed(bundle))
}

#[cfg(target_os = "macos")]
pub fn uninstall() -> Result<Installed, InstallError> {
    let bundle = macos_bundle()?;
    let _ = run_tool(LSREGISTER, &["-u".as_ref(), bundle.as_os_str()]);
    match std::fs::remove_dir_all(&bundle) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(InstallError::Write(
                bundle.display().to_string(),
                e.to_string(),
            ));
        }
    }
    Ok(Installed(bundle))
}

#[cfg(target_os = "macos")]
const LSREGISTER: &str = "/System/Library/Frameworks/CoreServices.framework/Frameworks/LaunchServices.framework/Support/lsregister";

#[cfg(target_os = "macos")]
fn macos_bundle() -> Result<PathBuf, InstallError> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(InstallError::NoHome("HOME"))?;
    Ok(PathBuf::from(home).join("Applications").join(BUNDLE_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_desktop_entry_runs_the_launcher_with_the_link() {
        let entry = desktop_entry("/home/op/bin/postern-launcher", false).unwrap();
        assert_eq!(
            entry,
            "[Desktop Entry]\nType=Application\nName=Postern WinBox launcher\n\
             Comment=Opens winbox:// links from Postern in WinBox\n\
             Exec=\"/home/op/bin/postern-launcher\" open -- %u\nTerminal=false\n\
             NoDisplay=true\nMimeType=x-scheme-handler/winbox;\n"
        );
        let lab = desktop_entry("/x", true).unwrap();
        assert!(lab.contains("Exec=\"/x\" open --lab -- %u\n"), "{lab}");
    }

    #[test]
    fn the_desktop_entry_quotes_odd_paths_as_the_specification_says() {
        let entry = desktop_entry(r#"/opt/my "tools"/50%/a\b$c"#, false).unwrap();
        let exec = entry.lines().find(|l| l.starts_with("Exec=")).unwrap();
        assert_eq!(
            exec,
            r#"Exec="/opt/my \\"tools\\"/50%%/a\\\\b\\$c" open -- %u"#
        );
        assert!(matches!(
            desktop_entry("/a\nExec=evil", false),
            Err(InstallError::UnsafePath(_))
        ));
    }

    #[test]
    fn mimeapps_list_gains_and_loses_only_our_line() {
        let empty = mimeapps_with("");
        assert_eq!(
            empty,
            "[Default Applications]\nx-scheme-handler/winbox=postern-winbox.desktop\n"
        );
        let existing = "[Added Associations]\ntext/plain=vim.desktop;\n\n[Default Applications]\n\
                        x-scheme-handler/winbox=other.desktop\ntext/html=firefox.desktop\n";
        let with = mimeapps_with(existing);
        assert_eq!(
            with,
            "[Added Associations]\ntext/plain=vim.desktop;\n\n[Default Applications]\n\
             text/html=firefox.desktop\nx-scheme-handler/winbox=postern-winbox.desktop\n"
        );
        let followed = mimeapps_with("[Default Applications]\na=b\n[Other]\nc=d\n");
        assert_eq!(
            followed,
            "[Default Applications]\na=b\nx-scheme-handler/winbox=postern-winbox.desktop\n[Other]\nc=d\n"
        );
        assert_eq!(
            mimeapps_without(&with),
            "[Added Associations]\ntext/plain=vim.desktop;\n\n[Default Applications]\n\
             text/html=firefox.desktop\n"
        );
        let other = "[Default Applications]\nx-scheme-handler/winbox=other.desktop\n";
        assert_eq!(mimeapps_without(other), other);
    }

    #[test]
    fn the_registry_entries_name_the_launcher_under_hkcu() {
        let reg = registry_install(r"C:\Users\op\postern-launcher.exe", false).unwrap();
        assert_eq!(
            reg,
            "Windows Registry Editor Version 5.00\r\n\r\n\
             [HKEY_CURRENT_USER\\Software\\Classes\\winbox]\r\n\
             @=\"URL:WinBox link (Postern)\"\r\n\"URL Protocol\"=\"\"\r\n\r\n\
             [HKEY_CURRENT_USER\\Software\\Classes\\winbox\\DefaultIcon]\r\n\
             @=\"C:\\\\Users\\\\op\\\\postern-launcher.exe,0\"\r\n\r\n\
             [HKEY_CURRENT_USER\\Software\\Classes\\winbox\\shell\\open\\command]\r\n\
             @=\"\\\"C:\\\\Users\\\\op\\\\postern-launcher.exe\\\" open -- \\\"%1\\\"\"\r\n"
        );
        assert!(!reg.contains("HKEY_LOCAL_MACHINE"));
        assert!(registry_uninstall().contains("[-HKEY_CURRENT_USER\\Software\\Classes\\winbox]"));
        assert!(matches!(
            registry_install("C:\\a\"b.exe", false),
            Err(InstallError::UnsafePath(_))
        ));
        assert_eq!(utf16le("A\r\n"), [0xff, 0xfe, b'A', 0, b'\r', 0, b'\n', 0]);
    }

    #[test]
    fn the_info_plist_declares_the_winbox_scheme() {
        let plist = info_plist("0.1.0");
        for needle in [
            "<key>CFBundleURLSchemes</key>\n\t\t\t<array>\n\t\t\t\t<string>winbox</string>",
            "<key>CFBundleExecutable</key>\n\t<string>applet</string>",
            "<key>CFBundleIdentifier</key>\n\t<string>org.postern.winbox-launcher</string>",
            "<key>LSUIElement</key>\n\t<true/>",
            "<string>0.1.0</string>",
        ] {
            assert!(plist.contains(needle), "{needle}");
        }
        assert!(plist.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist"));
        assert!(info_plist("1<2").contains("1&lt;2"));
    }

    #[test]
    fn the_applescript_quotes_the_path_and_the_link_for_the_shell() {
        let script = applescript("/Users/o\"p/bin/postern-launcher", false).unwrap();
        assert_eq!(
            script,
            "on open location theLink\n\tdo shell script quoted form of \
             \"/Users/o\\\"p/bin/postern-launcher\" & \" open -- \" & quoted form of theLink\n\
             end open location\n"
        );
    }
}
