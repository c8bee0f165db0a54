// Thin system-call layer for reuse-deploy. Policy, validation and messages
// live in TypeScript (src/native.ts); every function here makes one or two
// system calls and reports failures as an Error with `errno` and `syscall`.
#include <napi.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <string>
#include <vector>

#ifndef SO_ATTACH_REUSEPORT_CBPF
#define SO_ATTACH_REUSEPORT_CBPF 51
#endif
#ifndef SO_DETACH_REUSEPORT_BPF
#define SO_DETACH_REUSEPORT_BPF 68
#endif

namespace {

Napi::Value ThrowErrno(Napi::Env env, const char* syscall, int err) {
  Napi::Error e = Napi::Error::New(env, std::string(syscall) + ": " + strerror(err));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  e.ThrowAsJavaScriptException();
  return env.Undefined();
}

bool ArgsAreNumbers(const Napi::CallbackInfo& info, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (info.Length() <= i || !info[i].IsNumber()) {
      Napi::TypeError::New(info.Env(), "expected numeric arguments").ThrowAsJavaScriptException();
      return false;
    }
  }
  return true;
}

// bindReusePort(address: string, port: number): number
// A TCP socket with SO_REUSEADDR and SO_REUSEPORT, bound but NOT listening.
// It joins the port's reuseport group only at listen() (inet_csk_get_port
// checks conflicts at bind; reuseport_add_sock runs from inet_csk_listen_start),
// so binding early reports "port taken" and "other user" without taking traffic.
// An IPv6 wildcard address is dual-stack (IPV6_V6ONLY=0), as Node's listen(port).
Napi::Value BindReusePort(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "bindReusePort(address, port)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string addr = info[0].As<Napi::String>().Utf8Value();
  int port = info[1].As<Napi::Number>().Int32Value();

  sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  socklen_t len;
  int family;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, addr.c_str(), &v4->sin_addr) == 1) {
    family = AF_INET;
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    len = sizeof *v4;
  } else if (inet_pton(AF_INET6, addr.c_str(), &v6->sin6_addr) == 1) {
    family = AF_INET6;
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    len = sizeof *v6;
  } else {
    Napi::TypeError::New(env, "not a numeric IP address: " + addr).ThrowAsJavaScriptException();
    return env.Undefined();
  }

  int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ThrowErrno(env, "socket", errno);
  int one = 1, zero = 0;
  const char* step = nullptr;
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) step = "setsockopt(SO_REUSEADDR)";
  else if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) step = "setsockopt(SO_REUSEPORT)";
  else if (family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) < 0)
    step = "setsockopt(IPV6_V6ONLY)";
  else if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) < 0) step = "bind";
  if (step) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, step, err);
  }
  return Napi::Number::New(env, fd);
}

// listen(fd, backlog): the moment the socket joins the reuseport group.
Napi::Value Listen(const Napi::CallbackInfo& info) {
  if (!ArgsAreNumbers(info, 2)) return info.Env().Undefined();
  int fd = info[0].As<Napi::Number>().Int32Value();
  int backlog = info[1].As<Napi::Number>().Int32Value();
  if (listen(fd, backlog) < 0) return ThrowErrno(info.Env(), "listen", errno);
  return info.Env().Undefined();
}

// attachSteering(fd, index): a classic BPF program that always returns
// `index`, attached to the whole reuseport group through `fd`
// (reuseport_attach_prog). The program never loads packet bytes: a failed
// load would abort it with return 0, which is a valid index. An index past
// the end of the group falls back to hash selection (reuseport_select_sock).
Napi::Value AttachSteering(const Napi::CallbackInfo& info) {
  if (!ArgsAreNumbers(info, 2)) return info.Env().Undefined();
  int fd = info[0].As<Napi::Number>().Int32Value();
  uint32_t index = info[1].As<Napi::Number>().Uint32Value();
  sock_filter code[] = {{BPF_RET | BPF_K, 0, 0, index}};
  sock_fprog prog = {1, code};
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof prog) < 0)
    return ThrowErrno(info.Env(), "setsockopt(SO_ATTACH_REUSEPORT_CBPF)", errno);
  return info.Env().Undefined();
}

// attachSteeringBySource(fd, portLo, portHi, matchIndex, otherIndex): a
// classic BPF program that returns `matchIndex` for a connection whose TCP
// source port is in [portLo, portHi], and `otherIndex` for any other.
// reuseport_select_sock runs it on the SYN with the data pointer past the
// TCP header (run_bpf_filter pulls it), so the ports are read relative to
// the network header (SKF_NET_OFF, bpf_internal_load_pointer_neg_helper):
// after an IPv4 header of IHL words, or the 40-byte IPv6 one (a TCP SYN
// carries no extension headers from Linux, and one that does is only
// misread: it goes to one of the two listeners all the same). A failed load
// aborts the program with 0; keep `otherIndex` 0 so that this is the same.
Napi::Value AttachSteeringBySource(const Napi::CallbackInfo& info) {
  if (!ArgsAreNumbers(info, 5)) return info.Env().Undefined();
  int fd = info[0].As<Napi::Number>().Int32Value();
  uint32_t lo = info[1].As<Napi::Number>().Uint32Value();
  uint32_t hi = info[2].As<Napi::Number>().Uint32Value();
  uint32_t match = info[3].As<Napi::Number>().Uint32Value();
  uint32_t other = info[4].As<Napi::Number>().Uint32Value();
  const uint32_t net = static_cast<uint32_t>(SKF_NET_OFF);
  sock_filter code[] = {
      {BPF_LD | BPF_B | BPF_ABS, 0, 0, net},   // 0: A = first byte of the IP header
      {BPF_ALU | BPF_RSH | BPF_K, 0, 0, 4},    // 1: A = IP version
      {BPF_JMP | BPF_JEQ | BPF_K, 0, 2, 4},    // 2: IPv4: 3, else 5
      {BPF_LDX | BPF_B | BPF_MSH, 0, 0, net},  // 3: X = 4 * IHL
      {BPF_JMP | BPF_JA, 0, 0, 1},             // 4: to 6
      {BPF_LDX | BPF_W | BPF_IMM, 0, 0, 40},   // 5: X = IPv6 header length
      {BPF_LD | BPF_H | BPF_IND, 0, 0, net},   // 6: A = TCP source port
      {BPF_JMP | BPF_JGE | BPF_K, 0, 2, lo},   // 7: below lo: 10
      {BPF_JMP | BPF_JGT | BPF_K, 1, 0, hi},   // 8: above hi: 10
      {BPF_RET | BPF_K, 0, 0, match},          // 9
      {BPF_RET | BPF_K, 0, 0, other},          // 10
  };
  sock_fprog prog = {sizeof code / sizeof code[0], code};
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof prog) < 0)
    return ThrowErrno(info.Env(), "setsockopt(SO_ATTACH_REUSEPORT_CBPF)", errno);
  return info.Env().Undefined();
}

// detachSteering(fd): removes the group's program (Linux 5.3+).
// ENOENT means no program was attached and is not an error.
Napi::Value DetachSteering(const Napi::CallbackInfo& info) {
  if (!ArgsAreNumbers(info, 1)) return info.Env().Undefined();
  int fd = info[0].As<Napi::Number>().Int32Value();
  int dummy = 0;
  if (setsockopt(fd, SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, &dummy, sizeof dummy) < 0 && errno != ENOENT)
    return ThrowErrno(info.Env(), "setsockopt(SO_DETACH_REUSEPORT_BPF)", errno);
  return info.Env().Undefined();
}

// acceptQueue(fd): {queued, backlog}. For a listener, tcp_get_info reports
// sk_ack_backlog (connections waiting for accept) in tcpi_unacked and
// sk_max_ack_backlog in tcpi_sacked.
Napi::Value AcceptQueue(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!ArgsAreNumbers(info, 1)) return env.Undefined();
  int fd = info[0].As<Napi::Number>().Int32Value();
  tcp_info ti;
  memset(&ti, 0, sizeof ti);
  socklen_t len = sizeof ti;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0) return ThrowErrno(env, "getsockopt(TCP_INFO)", errno);
  Napi::Object out = Napi::Object::New(env);
  out.Set("listening", Napi::Boolean::New(env, ti.tcpi_state == 10 /* TCP_LISTEN */));
  out.Set("queued", Napi::Number::New(env, ti.tcpi_unacked));
  out.Set("backlog", Napi::Number::New(env, ti.tcpi_sacked));
  return out;
}

// unlisten(fd): takes a listening socket out of its reuseport group but keeps
// it bound, so that a later listen() puts it back. connect(AF_UNSPEC) runs
// tcp_disconnect, which stops the listener (inet_csk_listen_stop: anything
// still queued is reset, so the caller empties the queue first) and unhashes
// it; the port stays held because bind() set SOCK_BINDPORT_LOCK.
Napi::Value Unlisten(const Napi::CallbackInfo& info) {
  if (!ArgsAreNumbers(info, 1)) return info.Env().Undefined();
  sockaddr sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_family = AF_UNSPEC;
  if (connect(info[0].As<Napi::Number>().Int32Value(), &sa, sizeof sa) < 0)
    return ThrowErrno(info.Env(), "connect(AF_UNSPEC)", errno);
  return info.Env().Undefined();
}

// dup(fd): a second descriptor (close-on-exec) for the same socket, so that
// an app process can close its server and listen again later.
Napi::Value Dup(const Napi::CallbackInfo& info) {
  if (!ArgsAreNumbers(info, 1)) return info.Env().Undefined();
  int fd = fcntl(info[0].As<Napi::Number>().Int32Value(), F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return ThrowErrno(info.Env(), "fcntl(F_DUPFD_CLOEXEC)", errno);
  return Napi::Number::New(info.Env(), fd);
}

// dup2(fd, target): `target` (the keeper's stdout or stderr) refers to fd's
// file from now on. A keeper starts before its release's log file is known
// (src/deploy/prestart.ts) and moves its output there once it is.
Napi::Value Dup2(const Napi::CallbackInfo& info) {
  if (!ArgsAreNumbers(info, 2)) return info.Env().Undefined();
  int from = info[0].As<Napi::Number>().Int32Value();
  int to = info[1].As<Napi::Number>().Int32Value();
  while (dup2(from, to) < 0) {
    if (errno != EINTR) return ThrowErrno(info.Env(), "dup2", errno);
  }
  return info.Env().Undefined();
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  if (!ArgsAreNumbers(info, 1)) return info.Env().Undefined();
  if (close(info[0].As<Napi::Number>().Int32Value()) < 0) return ThrowErrno(info.Env(), "close", errno);
  return info.Env().Undefined();
}

// flock(fd, exclusive, wait): true when taken, false when another holder has
// it and wait is false. The kernel drops the lock when the holder dies.
Napi::Value Flock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!ArgsAreNumbers(info, 1) || info.Length() < 3) return env.Undefined();
  int fd = info[0].As<Napi::Number>().Int32Value();
  bool exclusive = info[1].ToBoolean().Value();
  bool wait = info[2].ToBoolean().Value();
  int op = (exclusive ? LOCK_EX : LOCK_UN) | (wait ? 0 : LOCK_NB);
  while (flock(fd, op) < 0) {
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
    return ThrowErrno(env, "flock", errno);
  }
  return Napi::Boolean::New(env, true);
}

// setSlice(tid, ns): asks for an EEVDF time slice of `ns` for the thread
// (sched_setattr(2) with sched_runtime, for SCHED_OTHER and SCHED_BATCH;
// kernel 6.12 and later, where __setscheduler_params clamps it to
// 0.1-100 ms; 0 restores the default). A waking thread whose slice is
// shorter than the running one's preempts it (PREEMPT_SHORT in
// check_preempt_wakeup_fair, kernel/sched/fair.c), and a group's slice is
// the shortest of its members' (cfs_rq_min_slice), which carries it across
// autogroups and cgroups. The policy and nice value are read first and
// written back unchanged. Returns the slice the kernel reports afterwards:
// 0 where it has no custom slices (older kernels ignore sched_runtime for
// these policies), or null for a thread under another policy, which is
// left alone. Throws on other errors (ESRCH: no such thread; EPERM: not
// ours).
struct SchedAttr {
  uint32_t size;
  uint32_t sched_policy;
  uint64_t sched_flags;
  int32_t sched_nice;
  uint32_t sched_priority;
  uint64_t sched_runtime;
  uint64_t sched_deadline;
  uint64_t sched_period;
};

Napi::Value SetSlice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!ArgsAreNumbers(info, 2)) return env.Undefined();
  pid_t tid = info[0].As<Napi::Number>().Int32Value();
  double ns = info[1].As<Napi::Number>().DoubleValue();
  SchedAttr attr{};
  if (syscall(SYS_sched_getattr, tid, &attr, sizeof attr, 0) < 0) return ThrowErrno(env, "sched_getattr", errno);
  const uint32_t kOther = 0, kBatch = 3;  // SCHED_OTHER, SCHED_BATCH
  const uint64_t kResetOnFork = 0x01;     // SCHED_FLAG_RESET_ON_FORK
  if (attr.sched_policy != kOther && attr.sched_policy != kBatch) return env.Null();
  attr.size = sizeof attr;
  attr.sched_flags &= kResetOnFork;
  attr.sched_runtime = ns > 0 ? static_cast<uint64_t>(ns) : 0;
  attr.sched_deadline = 0;
  attr.sched_period = 0;
  if (syscall(SYS_sched_setattr, tid, &attr, 0) < 0) return ThrowErrno(env, "sched_setattr", errno);
  SchedAttr now{};
  if (syscall(SYS_sched_getattr, tid, &now, sizeof now, 0) < 0) return ThrowErrno(env, "sched_getattr", errno);
  return Napi::Number::New(env, static_cast<double>(now.sched_runtime));
}

// sendFds(path, fds): connects a unix stream socket to `path`, sends the
// descriptors in one message (SCM_RIGHTS, unix(7)) with one byte of data,
// and returns the connected socket (close-on-exec), on which the receiver
// acknowledges. Each file is referenced by the message while in flight and
// then by the receiver, so the sender closing its own descriptors afterwards
// does not close the connections: tcp_close runs on a socket's last
// reference (__fput -> sock_close). A message the receiver never takes is
// dropped with its references when the receiving socket closes. At most
// SCM_MAX_FD (253) per call. Non-blocking: connect() to a unix stream
// listener completes at once, or fails with EAGAIN when the listener's
// backlog is full (unix_stream_connect with a zero timeout), so a new
// process that has stopped accepting cannot stall the caller's event loop;
// the caller then closes its connections the usual way. The one-byte
// sendmsg() on a fresh connection does not wait either.
Napi::Value SendFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsArray()) {
    Napi::TypeError::New(env, "sendFds(path, fds)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  Napi::Array list = info[1].As<Napi::Array>();
  std::vector<int> fds;
  for (uint32_t i = 0; i < list.Length(); i++) fds.push_back(list.Get(i).As<Napi::Number>().Int32Value());
  sockaddr_un addr{};
  if (fds.empty() || fds.size() > 253 || path.size() >= sizeof addr.sun_path) {
    Napi::RangeError::New(env, "sendFds: 1 to 253 descriptors and a path shorter than sun_path").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  addr.sun_family = AF_UNIX;
  memcpy(addr.sun_path, path.c_str(), path.size());
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0) return ThrowErrno(env, "socket", errno);
  if (connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
    int err = errno;
    close(s);
    return ThrowErrno(env, "connect", err);
  }
  char byte = 'H';
  iovec iov{&byte, 1};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  ssize_t n;
  do {
    n = sendmsg(s, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    int err = errno;
    close(s);
    return ThrowErrno(env, "sendmsg", err);
  }
  return Napi::Number::New(env, s);
}

// recvFds(fd): one message from a unix stream socket, without waiting:
// the descriptors it carries (close-on-exec), or null when nothing has
// arrived yet (EAGAIN). {fds: [], eof: true} once the sender has closed.
Napi::Value RecvFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!ArgsAreNumbers(info, 1)) return env.Undefined();
  int fd = info[0].As<Napi::Number>().Int32Value();
  char byte;
  iovec iov{&byte, 1};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * 253));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  ssize_t n;
  do {
    n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return env.Null();
  if (n < 0) return ThrowErrno(env, "recvmsg", errno);
  Napi::Array fds = Napi::Array::New(env);
  uint32_t count = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; i++) {
      int got;
      memcpy(&got, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds.Set(count++, Napi::Number::New(env, got));
    }
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("fds", fds);
  out.Set("eof", Napi::Boolean::New(env, n == 0));
  out.Set("truncated", Napi::Boolean::New(env, (msg.msg_flags & MSG_CTRUNC) != 0));
  return out;
}

// peerCredentials(fd): {pid, uid, gid} of the process on the other end of a
// unix socket, as the kernel recorded it at connect() (SO_PEERCRED).
Napi::Value PeerCredentials(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!ArgsAreNumbers(info, 1)) return env.Undefined();
  ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(info[0].As<Napi::Number>().Int32Value(), SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
    return ThrowErrno(env, "getsockopt(SO_PEERCRED)", errno);
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, cred.pid));
  out.Set("uid", Napi::Number::New(env, cred.uid));
  out.Set("gid", Napi::Number::New(env, cred.gid));
  return out;
}

// tcpListeners(port): [{family, address, inode, uid, queued}] for every TCP
// socket in LISTEN state on `port` in this network namespace, from the
// kernel's socket diagnostics (NETLINK_SOCK_DIAG, as `ss -ltn` uses).
// /proc/net/tcp lists every socket, TIME_WAIT included, so on a busy port it
// has tens of thousands of lines to format and parse; asking for
// TCPF_LISTEN only makes inet_diag_dump_icsk walk the listening hash alone,
// and it skips other ports itself (id.idiag_sport). One request per address
// family: there is no AF_UNSPEC handler. Returns null when the kernel or a
// sandbox refuses netlink, so that the caller can fall back to /proc.
bool DumpListeners(int family, int port, std::vector<inet_diag_msg>* out) {
  int nl = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (nl < 0) return false;
  struct {
    nlmsghdr nlh;
    inet_diag_req_v2 req;
  } msg;
  memset(&msg, 0, sizeof msg);
  msg.nlh.nlmsg_len = sizeof msg;
  msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  msg.nlh.nlmsg_seq = 1;
  msg.req.sdiag_family = family;
  msg.req.sdiag_protocol = IPPROTO_TCP;
  msg.req.idiag_states = 1 << 10;  // TCPF_LISTEN
  msg.req.id.idiag_sport = htons(port);
  msg.req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  msg.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  sockaddr_nl kernel;
  memset(&kernel, 0, sizeof kernel);
  kernel.nl_family = AF_NETLINK;
  if (sendto(nl, &msg, sizeof msg, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0) {
    close(nl);
    return false;
  }
  alignas(nlmsghdr) char buf[16384];
  for (;;) {
    ssize_t n = recv(nl, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      close(nl);
      return false;
    }
    int len = static_cast<int>(n);
    for (nlmsghdr* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_type == NLMSG_DONE) {
        close(nl);
        return true;
      }
      if (h->nlmsg_type == NLMSG_ERROR) {
        close(nl);
        return false;
      }
      if (h->nlmsg_type == SOCK_DIAG_BY_FAMILY && h->nlmsg_len >= NLMSG_LENGTH(sizeof(inet_diag_msg)))
        out->push_back(*static_cast<inet_diag_msg*>(NLMSG_DATA(h)));
    }
  }
}

Napi::Value TcpListeners(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!ArgsAreNumbers(info, 1)) return env.Undefined();
  int port = info[0].As<Napi::Number>().Int32Value();
  std::vector<inet_diag_msg> found;
  if (!DumpListeners(AF_INET, port, &found) || !DumpListeners(AF_INET6, port, &found)) return env.Null();
  Napi::Array out = Napi::Array::New(env, found.size());
  for (size_t i = 0; i < found.size(); i++) {
    const inet_diag_msg& m = found[i];
    char text[INET6_ADDRSTRLEN] = "";
    inet_ntop(m.idiag_family, m.id.idiag_src, text, sizeof text);
    Napi::Object o = Napi::Object::New(env);
    o.Set("family", Napi::Number::New(env, m.idiag_family == AF_INET6 ? 6 : 4));
    o.Set("address", Napi::String::New(env, text));
    o.Set("port", Napi::Number::New(env, ntohs(m.id.idiag_sport)));
    o.Set("inode", Napi::Number::New(env, m.idiag_inode));
    o.Set("uid", Napi::Number::New(env, m.idiag_uid));
    o.Set("queued", Napi::Number::New(env, m.idiag_rqueue));  // sk_ack_backlog for a listener
    out.Set(i, o);
  }
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("bindReusePort", Napi::Function::New(env, BindReusePort));
  exports.Set("listen", Napi::Function::New(env, Listen));
  exports.Set("attachSteering", Napi::Function::New(env, AttachSteering));
  exports.Set("attachSteeringBySource", Napi::Function::New(env, AttachSteeringBySource));
  exports.Set("detachSteering", Napi::Function::New(env, DetachSteering));
  exports.Set("acceptQueue", Napi::Function::New(env, AcceptQueue));
  exports.Set("closeFd", Napi::Function::New(env, CloseFd));
  exports.Set("unlisten", Napi::Function::New(env, Unlisten));
  exports.Set("dup", Napi::Function::New(env, Dup));
  exports.Set("dup2", Napi::Function::New(env, Dup2));
  exports.Set("flock", Napi::Function::New(env, Flock));
  exports.Set("peerCredentials", Napi::Function::New(env, PeerCredentials));
  exports.Set("sendFds", Napi::Function::New(env, SendFds));
  exports.Set("recvFds", Napi::Function::New(env, RecvFds));
  exports.Set("tcpListeners", Napi::Function::New(env, TcpListeners));
  exports.Set("setSlice", Napi::Function::New(env, SetSlice));
  return exports;
}

}  // namespace

NODE_API_MODULE(reuse_deploy, Init)
