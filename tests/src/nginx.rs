//! A real nginx (Debian's package) in front of test servers: its own config,
//! pid, log and temp folders under a temporary directory, loopback only,
//! never the system service. `cargo xtask ci` installs the package.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where Debian puts the binary.
const NGINX: &str = "/usr/sbin/nginx";

/// The nginx binary, or `None` outside CI when it is not installed (the test
/// then says so by name). In CI (`CI` set) or with `AMEIDE_REQUIRE_NGINX` set,
/// a missing nginx fails the test instead.
pub fn binary(test: &str) -> Option<PathBuf> {
    let path = PathBuf::from(NGINX);
    if path.exists() {
        return Some(path);
    }
    let required =
        std::env::var_os("CI").is_some() || std::env::var_os("AMEIDE_REQUIRE_NGINX").is_some();
    if required {
        panic!(
            "{test}: nginx is not installed at {NGINX}; `cargo xtask ci` installs Debian's nginx package (apt-get install nginx)"
        );
    }
    eprintln!(
        "SKIPPED {test}: nginx is not installed at {NGINX} (run `cargo xtask ci`, or apt-get install nginx)"
    );
    None
}

/// A free loopback port (bound, then released for nginx to take).
pub fn free_port() -> u16 {
    crate::closed_addr().port()
}

/// A running nginx; stopped (fast shutdown) when dropped.
pub struct Nginx {
    dir: tempfile::TempDir,
    binary: PathBuf,
    child: Child,
    /// The port of the first `listen` (see [`Nginx::start`]).
    pub port: u16,
}

impl Nginx {
    /// Starts nginx with `servers` (the `server { … }` blocks, where `{port}`
    /// is replaced by a free loopback port and `{dir}` by the instance's
    /// folder) inside an `http` block that sets the temp and log paths.
    pub fn start(binary: &Path, servers: &str) -> Nginx {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        for sub in ["logs", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).expect("nginx folders");
        }
        // Workers run as nobody when nginx starts as root: they need the folders.
        let _ = Command::new("chmod")
            .arg("-R")
            .arg("a+rwx")
            .arg(root)
            .status();
        let port = free_port();
        let servers = servers
            .replace("{port}", &port.to_string())
            .replace("{dir}", &root.display().to_string());
        let d = root.display();
        let config = format!(
            "worker_processes 1;\n\
             daemon off;\n\
             pid {d}/nginx.pid;\n\
             error_log {d}/logs/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             log_format timed '$remote_addr:$remote_port c=$connection n=$connection_requests \
             \"$request\" $status rt=$request_time uct=$upstream_connect_time \
             urt=$upstream_response_time pid=$pid';\n\
             access_log {d}/logs/access.log timed;\n\
             client_body_temp_path {d}/tmp/body;\n\
             proxy_temp_path {d}/tmp/proxy;\n\
             fastcgi_temp_path {d}/tmp/fastcgi;\n\
             uwsgi_temp_path {d}/tmp/uwsgi;\n\
             scgi_temp_path {d}/tmp/scgi;\n\
             client_max_body_size 0;\n\
             {servers}\n\
             }}\n"
        );
        std::fs::write(root.join("nginx.conf"), config).expect("write nginx.conf");
        let child = Command::new(binary)
            .arg("-p")
            .arg(root)
            .arg("-c")
            .arg(root.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nginx");
        let nginx = Nginx {
            dir,
            binary: binary.to_owned(),
            child,
            port,
        };
        nginx.wait_listening();
        nginx
    }

    fn wait_listening(&self) {
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "nginx did not listen on {}: {}",
            self.port,
            self.error_log()
        );
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The instance's folder (certificates may be written there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The error log so far, for failure messages.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("logs/error.log")).unwrap_or_default()
    }

    /// The access log's requests that did not end with status 200 or took
    /// a second or more (format `timed`: client address and port, nginx's
    /// connection number, status, request and upstream times, worker pid),
    /// for failure messages.
    pub fn access_log_unusual(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("logs/access.log")).unwrap_or_default();
        log.lines()
            .filter(|line| {
                let slow = line
                    .split_whitespace()
                    .find_map(|field| field.strip_prefix("rt="))
                    .and_then(|t| t.parse::<f64>().ok())
                    .is_some_and(|t| t >= 1.0);
                slow || !line.contains("\" 200 ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A graceful reload (`nginx -s reload`): new workers take new
    /// connections, old ones finish their requests and close theirs.
    pub fn reload(&self) {
        let status = Command::new(&self.binary)
            .arg("-p")
            .arg(self.dir.path())
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .args(["-s", "reload"])
            .status()
            .expect("nginx -s reload");
        assert!(
            status.success(),
            "nginx -s reload: {status}: {}",
            self.error_log()
        );
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: fast shutdown of master and workers.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Certificates made with the `openssl` command line for a test: a CA, a
/// server certificate for `localhost` (DNS name only), a client certificate.
pub struct Certs {
    pub dir: PathBuf,
}

/// Runs the `openssl` command line in `dir`; panics with its error.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    /// Writes `ca.pem`/`ca.key`, `server.pem`/`server.key`, `client.pem`/`client.key`
    /// (and an unrelated `other-ca.pem`) into `dir`.
    pub fn generate(dir: &Path) -> Certs {
        let run = |args: &[&str]| openssl(dir, args);
        for ca in ["ca", "other-ca"] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=ameide test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        let certs = Certs {
            dir: dir.to_owned(),
        };
        certs.leaf(
            "server",
            "ameide test server",
            "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth",
        );
        certs.client("client", "ameide test client");
        certs
    }

    /// Another server certificate signed by the CA, for the DNS name
    /// `dns_name` only: `{name}.pem`, `{name}.key`.
    pub fn server_for(&self, name: &str, dns_name: &str) {
        self.leaf(
            name,
            dns_name,
            &format!("subjectAltName=DNS:{dns_name}\nextendedKeyUsage=serverAuth"),
        );
    }

    /// Another client certificate signed by the CA: `{name}.pem`, `{name}.key`,
    /// with subject CN `cn`.
    pub fn client(&self, name: &str, cn: &str) {
        self.leaf(
            name,
            cn,
            "subjectAltName=DNS:ameide-test-client\nextendedKeyUsage=clientAuth",
        );
    }

    fn leaf(&self, leaf: &str, cn: &str, ext: &str) {
        let dir = &self.dir;
        let run = |args: &[&str]| openssl(dir, args);
        std::fs::write(
            dir.join(format!("{leaf}.ext")),
            format!("basicConstraints=CA:FALSE\n{ext}\n"),
        )
        .expect("write ext");
        run(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{leaf}.key"),
            "-out",
            &format!("{leaf}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{leaf}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{leaf}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{leaf}.ext"),
        ]);
        let _ = Command::new("chmod").arg("-R").arg("a+r").arg(dir).status();
    }

    /// An nginx `server` block terminating TLS for `localhost` (this
    /// directory's server certificate) with `grpc_pass` to `upstream`;
    /// `server` and `location` are extra directives for each block.
    pub fn grpc_tls_server(
        &self,
        upstream: std::net::SocketAddr,
        server: &str,
        location: &str,
    ) -> String {
        format!(
            "server {{ listen 127.0.0.1:{{port}} ssl http2; ssl_certificate {}; ssl_certificate_key {}; {server}\n location / {{ {location} grpc_pass grpc://{upstream}; }} }}",
            self.path("server.pem").display(),
            self.path("server.key").display(),
        )
    }

    /// The bytes of one of the files.
    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).expect("read certificate file")
    }

    /// The path of one of the files.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}
