//! The state directory of a stack and what is kept in it between runs:
//!
//! ```text
//! <state>/control/      control's database, mesh CA, admin token, join string
//! <state>/nodes/<svc>/  each service node's identity (keys stay there)
//! <state>/public/       the local public CA, certificates, tunnel store and token, connector rules
//! <state>/ports.json    ports chosen for addresses configured with port 0
//! <state>/up.sock       the running stack's status socket
//! ```

use crate::UpError;
use gatehouse_stack::Listen;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// File name of the status socket in the state directory.
pub const SOCKET_FILE: &str = "up.sock";

/// Paths inside a state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    /// The directory.
    pub root: PathBuf,
}

/// Ports picked for addresses configured with port 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    /// Control.
    pub control: Option<u16>,
    /// The edge's HTTPS.
    pub https: Option<u16>,
    /// The edge's HTTP.
    pub http: Option<u16>,
    /// The edge's tunnel port.
    pub tunnel: Option<u16>,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> UpError {
    move |source| UpError::Io { what, source }
}

/// Creates a directory readable only by its owner, or makes an existing
/// one so (it holds keys and tokens).
pub fn private_dir(dir: &Path) -> Result<(), UpError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.exists() {
        return std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("securing {}", dir.display())));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("creating {}", dir.display())))
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, contents: &str) -> Result<(), UpError> {
    gatehouse_control::ca::write_private(path, contents)
        .map_err(io(format!("writing {}", path.display())))
}

/// Writes a file.
pub fn write(path: &Path, contents: &str) -> Result<(), UpError> {
    std::fs::write(path, contents).map_err(io(format!("writing {}", path.display())))
}

impl StateDir {
    /// Opens (creating) a state directory.
    pub fn open(root: &Path) -> Result<Self, UpError> {
        private_dir(root)?;
        let s = StateDir {
            root: root.to_path_buf(),
        };
        private_dir(&s.nodes())?;
        private_dir(&s.public())?;
        Ok(s)
    }

    /// Control's state.
    pub fn control(&self) -> PathBuf {
        self.root.join("control")
    }

    /// The mesh CA certificate (written by control).
    pub fn mesh_ca(&self) -> PathBuf {
        self.control().join("ca.crt")
    }

    /// The admin token (written by control).
    pub fn admin_token(&self) -> PathBuf {
        self.control().join("admin.token")
    }

    /// Service nodes' state directories.
    pub fn nodes(&self) -> PathBuf {
        self.root.join("nodes")
    }

    /// One service node's state directory.
    pub fn node(&self, service: &str) -> PathBuf {
        self.nodes().join(service)
    }

    /// The public tier's files.
    pub fn public(&self) -> PathBuf {
        self.root.join("public")
    }

    /// The local public CA certificate.
    pub fn public_ca(&self) -> PathBuf {
        self.public().join("ca.pem")
    }

    /// The one-off key a device joins with as the stack's first user.
    pub fn device_authkey(&self) -> PathBuf {
        self.root.join("device.authkey")
    }

    /// The status socket.
    pub fn socket(&self) -> PathBuf {
        self.root.join(SOCKET_FILE)
    }

    fn ports_file(&self) -> PathBuf {
        self.root.join("ports.json")
    }

    /// The ports kept from an earlier start.
    pub fn ports(&self) -> Ports {
        std::fs::read(self.ports_file())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Keeps the ports chosen for addresses configured with port 0.
    pub fn save_ports(&self, p: &Ports) -> Result<(), UpError> {
        let text =
            serde_json::to_string_pretty(p).map_err(|e| UpError::state("encoding the ports", e))?;
        write(&self.ports_file(), &format!("{text}\n"))
    }

    /// The listening addresses: configured ones, and for port 0 the port
    /// kept from an earlier start (control's port must not change: nodes
    /// and joined devices keep its URL).
    pub fn resolve(&self, listen: &Listen) -> Listen {
        let kept = self.ports();
        let pick = |a: SocketAddr, k: Option<u16>| match (a.port(), k) {
            (0, Some(p)) => SocketAddr::new(a.ip(), p),
            _ => a,
        };
        Listen {
            control: pick(listen.control, kept.control),
            https: pick(listen.https, kept.https),
            http: pick(listen.http, kept.http),
            tunnel: pick(listen.tunnel, kept.tunnel),
            socks5: listen.socks5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_ports_fill_port_zero_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(&dir.path().join("st")).unwrap();
        let l = Listen {
            control: "127.0.0.1:0".parse().unwrap(),
            tunnel: "127.0.0.1:0".parse().unwrap(),
            ..Listen::default()
        };
        assert_eq!(s.resolve(&l), l);
        s.save_ports(&Ports {
            control: Some(4000),
            https: Some(4001),
            http: None,
            tunnel: Some(4002),
        })
        .unwrap();
        let r = s.resolve(&l);
        assert_eq!(r.control.port(), 4000);
        assert_eq!(r.https, Listen::default().https);
        assert_eq!(r.tunnel.port(), 4002);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&s.root).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn an_existing_open_directory_is_closed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("st");
        std::fs::create_dir_all(root.join("nodes")).unwrap();
        for d in [&root, &root.join("nodes")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let s = StateDir::open(&root).unwrap();
        for d in [s.root.clone(), s.nodes(), s.public()] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
    }
}
