//! Well-known modifier1 values.

/// WSGI / Python request (the default).
pub const WSGI: u8 = 0;
/// PSGI (Perl).
pub const PSGI: u8 = 5;
/// Lua WSAPI.
pub const LUA: u8 = 6;
/// Rack (Ruby).
pub const RACK: u8 = 7;
/// JVM (JWSGI, Ring).
pub const JVM: u8 = 8;
/// CGI.
pub const CGI: u8 = 9;
/// Management.
pub const MANAGEMENT: u8 = 10;
/// GCCGO.
pub const GCCGO: u8 = 11;
/// PHP.
pub const PHP: u8 = 14;
/// Mono.
pub const MONO: u8 = 15;
/// Spooler.
pub const SPOOLER: u8 = 17;
/// Symcall.
pub const SYMCALL: u8 = 18;
/// SSI.
pub const SSI: u8 = 19;
/// Eval.
pub const EVAL: u8 = 22;
/// XSLT.
pub const XSLT: u8 = 23;
/// V8.
pub const V8: u8 = 24;
/// GridFS.
pub const GRIDFS: u8 = 25;
/// Fastfunc.
pub const FASTFUNC: u8 = 26;
/// GlusterFS.
pub const GLUSTERFS: u8 = 27;
/// RADOS.
pub const RADOS: u8 = 28;
/// WSGI with the PATH_INFO fix.
pub const WSGI_PATH_INFO_FIX: u8 = 30;
/// Message.
pub const MESSAGE: u8 = 31;
/// Message array.
pub const MESSAGE_ARRAY: u8 = 32;
/// Message marshal.
pub const MESSAGE_MARSHAL: u8 = 33;
/// WebDAV request; also the fork-server request and reply (on a different socket).
pub const WEBDAV: u8 = 35;
/// Fork-server request (modifier2 = fd mask) and reply (modifier2 = 0).
pub const FORK_SERVER: u8 = 35;
/// SNMP.
pub const SNMP: u8 = 48;
/// Raw HTTP response ('H').
pub const RAW_HTTP: u8 = 72;
/// Multicast announce.
pub const MULTICAST_ANNOUNCE: u8 = 73;
/// Multicast message.
pub const MULTICAST: u8 = 74;
/// Cluster membership.
pub const CLUSTER: u8 = 95;
/// Remote logging.
pub const REMOTE_LOGGING: u8 = 96;
/// Brutal reload.
pub const RELOAD: u8 = 97;
/// Graceful reload.
pub const GRACEFUL_RELOAD: u8 = 98;
/// Config request.
pub const CONFIG_REQUEST: u8 = 99;
/// Ping.
pub const PING: u8 = 100;
/// Echo.
pub const ECHO: u8 = 101;
/// Legion.
pub const LEGION: u8 = 109;
/// Signal.
pub const SIGNAL: u8 = 110;
/// Cache.
pub const CACHE: u8 = 111;
/// Config push on the emperor's config channel.
pub const CONFIG_PUSH: u8 = 115;
/// RPC.
pub const RPC: u8 = 173;
/// Persistent-connection close mark.
pub const PERSISTENT_CLOSE: u8 = 200;
/// Subscription.
pub const SUBSCRIPTION: u8 = 224;
/// Example / private use.
pub const EXAMPLE: u8 = 250;
/// Generic response.
pub const RESPONSE: u8 = 255;
