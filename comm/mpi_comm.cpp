// mpi_comm.cpp: Open MPI backend (see mpi_comm.h for the progress engines and fault handling).
//
// Invariants:
// - Each group is its own MPI communicator (MPI_Comm_split of a dup of MPI_COMM_WORLD), so
//   collectives of different groups never match each other.
// - Point-to-point uses one tag per unordered peer pair of a group: MPI's non-overtaking rule then
//   matches messages in call order, exactly as NCCL does; receives are posted with the exact count
//   and a message of another size is reported as an error.
// - Only the engine touches MPI_Requests, under its mutex; a handle only reads the op's atomic state.
#include "comm/mpi_comm.h"

#include <cstdio>

#ifndef STP_HAVE_MPI

namespace stp {
bool comm_mpi_available() { return false; }
MpiSession::Result MpiSession::start(int*, char***) {
  return {nullptr, "this stp-train was built without MPI (STP_MPI=OFF): install libopenmpi-dev and "
                   "reconfigure to run more than one rank"};
}
MpiSession::~MpiSession() = default;
CommCreateResult comm_create_mpi(const MpiSession&, const Topology&, bool, const MpiOptions&) {
  return {nullptr, "this stp-train was built without MPI (STP_MPI=OFF)"};
}
}  // namespace stp

#else

// The C API only: Open MPI's C++ bindings would need libmpi_cxx.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "runtime/core/clock.h"

namespace stp {

bool comm_mpi_available() { return true; }

namespace {

std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, buf, &len);
  return std::string(buf, len);
}

MPI_Datatype mpi_dtype(DType t) {
  switch (t) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    case DType::U8: return MPI_UINT8_T;
    case DType::BF16: return MPI_UINT16_T;  // moved bit for bit; check() refuses reducing it
  }
  return MPI_DATATYPE_NULL;
}

// One operation: its arguments, its MPI request once started, and its completion state.
struct MpiOp {
  enum State : int { Queued = 0, Active = 1, Done = 2 };
  CommOpInfo info;
  MPI_Comm comm = MPI_COMM_NULL;
  const void* send = nullptr;
  void* recv = nullptr;
  int tag = 0;
  int peer_rank = -1;  // in `comm`
  MPI_Request req = MPI_REQUEST_NULL;
  std::atomic<int> state{Queued};
  std::string error;  // written before state becomes Done (release), read after (acquire)

  void finish(std::string err) {
    error = std::move(err);
    state.store(Done, std::memory_order_release);
  }
};

constexpr int kPingTag = 1, kPongTag = 2;  // on the communicator used only for liveness pings

// Issues one operation's non-blocking MPI call; returns the MPI error code.
int mpi_issue(MpiOp& op) {
  const CommOpInfo& in = op.info;
  const int n = int(in.count);
  const MPI_Datatype dt = mpi_dtype(in.dtype);
  const MPI_Op mop = in.op == ReduceOp::Sum ? MPI_SUM : MPI_MAX;
  const void* sbuf = op.send == op.recv ? MPI_IN_PLACE : op.send;
  switch (in.kind) {
    case CommOpKind::AllReduce: return MPI_Iallreduce(sbuf, op.recv, n, dt, mop, op.comm, &op.req);
    case CommOpKind::AllGather:
      return MPI_Iallgather(op.send, n, dt, op.recv, n, dt, op.comm, &op.req);
    case CommOpKind::ReduceScatter:
      return MPI_Ireduce_scatter_block(op.send, op.recv, n, dt, mop, op.comm, &op.req);
    case CommOpKind::Broadcast: return MPI_Ibcast(op.recv, n, dt, in.peer, op.comm, &op.req);
    case CommOpKind::Send:
      return MPI_Isend(op.send, n, dt, op.peer_rank, op.tag, op.comm, &op.req);
    case CommOpKind::Recv: return MPI_Irecv(op.recv, n, dt, op.peer_rank, op.tag, op.comm, &op.req);
    case CommOpKind::Barrier: return MPI_Ibarrier(op.comm, &op.req);
  }
  return MPI_ERR_OTHER;
}

// What a completed request's status says about the operation: empty when fine.
std::string mpi_status_error(const MpiOp& op, const MPI_Status& st, bool in_status) {
  if (in_status && st.MPI_ERROR != MPI_SUCCESS) {
    if (st.MPI_ERROR == MPI_ERR_TRUNCATE)
      return "the peer sent more than the " + std::to_string(op.info.count) + " elements posted";
    return mpi_error_string(st.MPI_ERROR);
  }
  if (op.info.kind != CommOpKind::Recv) return {};
  int got = 0;
  MPI_Get_count(&st, mpi_dtype(op.info.dtype), &got);
  if (got != op.info.count)
    return "received " + std::to_string(got) + " elements, expected exactly " +
           std::to_string(op.info.count);
  return {};
}

// Starts queued operations in FIFO order and completes finished ones. One per communicator.
class MpiEngine {
 public:
  MpiEngine(CommProgress mode, int poll_us) : mode_(mode), poll_us_(poll_us) {
    if (mode_ == CommProgress::Thread) thread_ = std::thread([this] { run(); });
  }
  ~MpiEngine() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    stop_responder();
  }
  // Answers every PING on `comm` with a PONG, from the progress engine, so that a rank blocked in
  // a wait still proves it is alive (Communicator::diagnose).
  void start_responder(MPI_Comm comm) {
    std::lock_guard<std::mutex> lk(mu_);
    ping_comm_ = comm;
    MPI_Irecv(&ping_buf_, 1, MPI_INT, MPI_ANY_SOURCE, kPingTag, ping_comm_, &ping_req_);
  }
  MpiEngine(const MpiEngine&) = delete;
  MpiEngine& operator=(const MpiEngine&) = delete;

  void submit(std::shared_ptr<MpiOp> op) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      queued_.push_back(std::move(op));
      if (mode_ == CommProgress::Inline) pump_locked();
    }
    if (mode_ == CommProgress::Thread) cv_.notify_one();
  }
  // Advances everything now. Thread mode: only if the progress thread is not pumping already, so
  // the caller's calls between units add progress where the thread is starved of a core.
  void progress() {
    std::unique_lock<std::mutex> lk(mu_, std::defer_lock);
    if (mode_ == CommProgress::Inline) lk.lock();
    else if (!lk.try_lock()) return;
    pump_locked();
  }
  bool busy() {
    std::lock_guard<std::mutex> lk(mu_);
    return !queued_.empty() || !active_.empty();
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lk(mu_);
    while (!stop_) {
      pump_locked();
      if (queued_.empty() && active_.empty()) {  // idle: still answer pings, every 20 ms
        cv_.wait_for(lk, std::chrono::milliseconds(20), [&] { return stop_ || !queued_.empty(); });
        continue;
      }
      if (!queued_.empty()) continue;
      lk.unlock();
      std::this_thread::sleep_for(std::chrono::microseconds(poll_us_));
      lk.lock();
    }
  }
  void pump_locked();
  void start_locked(std::shared_ptr<MpiOp> op);
  void answer_pings_locked();
  void stop_responder();

  const CommProgress mode_;
  const int poll_us_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<MpiOp>> queued_;
  std::vector<std::shared_ptr<MpiOp>> active_;
  std::vector<MPI_Request> reqs_;  // scratch for MPI_Testsome
  std::vector<int> idx_;
  std::vector<MPI_Status> sts_;
  bool stop_ = false;
  MPI_Comm ping_comm_ = MPI_COMM_NULL;
  MPI_Request ping_req_ = MPI_REQUEST_NULL;
  int ping_buf_ = 0, pong_val_ = 1;
  std::vector<MPI_Request> pongs_;
  std::thread thread_;
};

void MpiEngine::answer_pings_locked() {
  if (ping_req_ == MPI_REQUEST_NULL) return;
  for (;;) {
    int done = 0;
    MPI_Status st;
    MPI_Test(&ping_req_, &done, &st);
    if (!done) break;
    pongs_.push_back(MPI_REQUEST_NULL);
    MPI_Isend(&pong_val_, 1, MPI_INT, st.MPI_SOURCE, kPongTag, ping_comm_, &pongs_.back());
    MPI_Irecv(&ping_buf_, 1, MPI_INT, MPI_ANY_SOURCE, kPingTag, ping_comm_, &ping_req_);
  }
  if (!pongs_.empty()) {
    int all = 0;
    MPI_Testall(int(pongs_.size()), pongs_.data(), &all, MPI_STATUSES_IGNORE);
    if (all) pongs_.clear();
  }
}

void MpiEngine::stop_responder() {
  if (ping_req_ != MPI_REQUEST_NULL) {
    MPI_Cancel(&ping_req_);
    MPI_Wait(&ping_req_, MPI_STATUS_IGNORE);
  }
  for (MPI_Request& r : pongs_)
    if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
  pongs_.clear();
}

void MpiEngine::start_locked(std::shared_ptr<MpiOp> op) {
  const int rc = mpi_issue(*op);
  if (rc != MPI_SUCCESS) {
    op->finish("MPI refused to start it: " + mpi_error_string(rc));
    return;
  }
  op->state.store(MpiOp::Active, std::memory_order_relaxed);
  active_.push_back(std::move(op));
}

void MpiEngine::pump_locked() {
  answer_pings_locked();
  while (!queued_.empty()) {
    std::shared_ptr<MpiOp> op = std::move(queued_.front());
    queued_.pop_front();
    start_locked(std::move(op));
  }
  if (active_.empty()) return;
  const int n = int(active_.size());
  reqs_.resize(n);
  idx_.resize(n);
  sts_.resize(n);
  for (int i = 0; i < n; ++i) reqs_[i] = active_[i]->req;
  int done = 0;
  const int rc = MPI_Testsome(n, reqs_.data(), &done, idx_.data(), sts_.data());
  if (done == MPI_UNDEFINED || done == 0) return;
  const bool in_status = rc == MPI_ERR_IN_STATUS;
  for (int k = 0; k < done; ++k) {
    MpiOp& op = *active_[idx_[k]];
    op.req = MPI_REQUEST_NULL;
    std::string err = mpi_status_error(op, sts_[k], in_status);
    if (err.empty() && rc != MPI_SUCCESS && !in_status) err = mpi_error_string(rc);
    op.finish(std::move(err));
  }
  size_t w = 0;
  for (size_t i = 0; i < active_.size(); ++i)
    if (active_[i]->state.load(std::memory_order_relaxed) != MpiOp::Done) active_[w++] = active_[i];
  active_.resize(w);
}

class MpiRequest final : public CommRequest {
 public:
  MpiRequest(std::shared_ptr<MpiOp> op, MpiEngine* engine) : op_(std::move(op)), engine_(engine) {}
  bool test() override {
    if (op_->state.load(std::memory_order_acquire) == MpiOp::Done) return true;
    engine_->progress();
    return op_->state.load(std::memory_order_acquire) == MpiOp::Done;
  }
  std::string error() const override { return op_->error; }
  std::string describe() const override { return op_->info.describe(); }

 private:
  std::shared_ptr<MpiOp> op_;
  MpiEngine* engine_;
};

}  // namespace

// ---- session -------------------------------------------------------------------------------------

MpiSession::Result MpiSession::start(int* argc, char*** argv) {
  std::unique_ptr<MpiSession> s(new MpiSession());
  int inited = 0;
  MPI_Initialized(&inited);
  int provided = MPI_THREAD_SINGLE;
  if (!inited) {
    const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
    if (rc != MPI_SUCCESS) return {nullptr, "MPI_Init_thread failed: " + mpi_error_string(rc)};
    s->owns_ = true;
  } else {
    MPI_Query_thread(&provided);
  }
  s->thread_multiple_ = provided >= MPI_THREAD_MULTIPLE;
  MPI_Comm_rank(MPI_COMM_WORLD, &s->rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &s->size_);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  return {std::move(s), ""};
}

MpiSession::~MpiSession() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owns_ && !finalized) MPI_Finalize();
}

// ---- communicator --------------------------------------------------------------------------------

namespace {

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(const Topology& topo, const MpiOptions& opts)
      : topo_(topo), engine_(std::make_unique<MpiEngine>(opts.progress, opts.poll_us)) {}
  ~MpiCommunicator() override {
    // Operations still in flight (a handle dropped unwaited) get a short grace period.
    for (int i = 0; i < 2000 && engine_->busy(); ++i) {
      engine_->progress();
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    }
    engine_.reset();  // the progress thread stops before its communicators go
    if (ping_comm_ != MPI_COMM_NULL) MPI_Comm_free(&ping_comm_);
    for (MPI_Comm& c : comms_)
      if (c != MPI_COMM_NULL) MPI_Comm_free(&c);
  }

  // Splits the world into this rank's groups; returns an error message.
  std::string build(bool v_placement);
  std::string diagnose(double wait_s) override;

  int world_rank() const override { return topo_.rank; }
  int world_size() const override { return topo_.world(); }
  int rank(GroupKind g) const override { return my_index_[int(g)]; }
  int size(GroupKind g) const override { return int(members_[int(g)].size()); }
  const std::vector<int>& members(GroupKind g) const override { return members_[int(g)]; }

  CommHandle all_reduce(GroupKind g, const void* send, void* recv, int64_t count, DType t,
                        ReduceOp op, StreamRef) override {
    return issue(info(CommOpKind::AllReduce, g, count, t, op, -1), send, recv);
  }
  CommHandle all_gather(GroupKind g, const void* send, void* recv, int64_t n, DType t,
                        StreamRef) override {
    return issue(info(CommOpKind::AllGather, g, n, t, ReduceOp::Sum, -1), send, recv);
  }
  CommHandle reduce_scatter(GroupKind g, const void* send, void* recv, int64_t n, DType t,
                            ReduceOp op, StreamRef) override {
    return issue(info(CommOpKind::ReduceScatter, g, n, t, op, -1), send, recv);
  }
  CommHandle broadcast(GroupKind g, void* buf, int64_t count, DType t, int root, StreamRef) override {
    return issue(info(CommOpKind::Broadcast, g, count, t, ReduceOp::Sum, root), buf, buf);
  }
  CommHandle send(GroupKind g, const void* buf, int64_t count, DType t, int peer, StreamRef) override {
    return issue(info(CommOpKind::Send, g, count, t, ReduceOp::Sum, peer), buf, nullptr);
  }
  CommHandle recv(GroupKind g, void* buf, int64_t count, DType t, int peer, StreamRef) override {
    return issue(info(CommOpKind::Recv, g, count, t, ReduceOp::Sum, peer), nullptr, buf);
  }
  CommHandle barrier(GroupKind g) override {
    return issue(info(CommOpKind::Barrier, g, 0, DType::U8, ReduceOp::Sum, -1), nullptr, nullptr);
  }

  void progress() override { engine_->progress(); }
  CommStats stats() const override { return stats_; }
  std::string whoami() const override {
    return "rank " + std::to_string(topo_.rank) + " (tp " + std::to_string(topo_.me.tp) + ", pp " +
           std::to_string(topo_.me.pp) + ", dp " + std::to_string(topo_.me.dp) + ")";
  }
  [[noreturn]] void abort(const std::string& message, int code) override {
    std::fprintf(stderr, "[stp] FATAL %s: %s\n", whoami().c_str(), message.c_str());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; this satisfies [[noreturn]]
  }

 private:
  CommOpInfo info(CommOpKind k, GroupKind g, int64_t count, DType t, ReduceOp op, int peer) {
    CommOpInfo in;
    in.kind = k;
    in.group = g;
    in.members = members_[int(g)];
    in.seq = ++stats_.ops;
    in.peer = peer;
    in.count = count;
    in.dtype = t;
    in.op = op;
    return in;
  }
  std::string check(const CommOpInfo& in, const void* send, const void* recv) const;
  CommHandle issue(CommOpInfo in, const void* send, void* recv);

  Topology topo_;
  std::unique_ptr<MpiEngine> engine_;
  MPI_Comm ping_comm_ = MPI_COMM_NULL;  // liveness pings only (diagnose)
  int ping_val_ = 1;
  MPI_Comm comms_[kGroupKinds] = {MPI_COMM_NULL, MPI_COMM_NULL, MPI_COMM_NULL, MPI_COMM_NULL,
                                  MPI_COMM_NULL};
  std::vector<int> members_[kGroupKinds];
  int my_index_[kGroupKinds] = {0, 0, 0, 0, 0};
  CommStats stats_;
};

std::string MpiCommunicator::check(const CommOpInfo& in, const void* send, const void* recv) const {
  if (in.count < 0 || in.count > INT_MAX)
    return "element count " + std::to_string(in.count) + " is outside 0..INT_MAX";
  const int n = int(members_[int(in.group)].size());
  const bool p2p = in.kind == CommOpKind::Send || in.kind == CommOpKind::Recv;
  if ((p2p || in.kind == CommOpKind::Broadcast) && (in.peer < 0 || in.peer >= n))
    return "peer/root " + std::to_string(in.peer) + " is not a member index of a group of " +
           std::to_string(n);
  if (p2p && in.peer == my_index_[int(in.group)])
    return "point-to-point with itself (hand the tensor over locally)";
  if (in.dtype == DType::BF16 && (in.kind == CommOpKind::AllReduce || in.kind == CommOpKind::ReduceScatter))
    return "the MPI backend does not reduce bf16 (its host path is fp32)";
  if ((in.kind == CommOpKind::AllGather || in.kind == CommOpKind::ReduceScatter) && send == recv &&
      send != nullptr)
    return "send and recv must be different buffers";
  return {};
}

CommHandle MpiCommunicator::issue(CommOpInfo in, const void* send, void* recv) {
  const std::string bad = check(in, send, recv);
  if (!bad.empty()) return comm_failed_handle(in, bad);
  auto op = std::make_shared<MpiOp>();
  const int gi = int(in.group);
  op->comm = comms_[gi];
  op->send = send;
  op->recv = recv;
  if (in.kind == CommOpKind::Send || in.kind == CommOpKind::Recv) {
    const int a = std::min(my_index_[gi], in.peer), b = std::max(my_index_[gi], in.peer);
    op->tag = a * int(members_[gi].size()) + b;  // one tag per unordered peer pair
    op->peer_rank = in.peer;
  }
  const bool contributes = in.kind != CommOpKind::Recv && in.kind != CommOpKind::Barrier;
  if (contributes) stats_.bytes += in.count * int64_t(dtype_size(in.dtype));
  op->info = std::move(in);
  engine_->submit(op);
  return CommHandle(std::make_unique<MpiRequest>(std::move(op), engine_.get()));
}

std::string MpiCommunicator::build(bool v_placement) {
  const Topology& t = topo_;
  members_[int(GroupKind::World)].resize(t.world());
  for (int r = 0; r < t.world(); ++r) members_[int(GroupKind::World)][r] = r;
  members_[int(GroupKind::Tp)] = t.tp_group();
  members_[int(GroupKind::Pp)] = t.pp_group();
  members_[int(GroupKind::Dp)] = t.dp_group();
  members_[int(GroupKind::Embed)] = t.embedding_group(v_placement);
  // A rank that holds neither the embedding nor the head is an embedding group of its own.
  const std::vector<int>& e = members_[int(GroupKind::Embed)];
  if (std::find(e.begin(), e.end(), t.rank) == e.end()) members_[int(GroupKind::Embed)] = {t.rank};
  MPI_Comm world = MPI_COMM_NULL;
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &world);
  if (rc != MPI_SUCCESS) return "MPI_Comm_dup failed: " + mpi_error_string(rc);
  for (int g = 0; g < kGroupKinds; ++g) {
    const std::vector<int>& m = members_[g];
    int idx = -1;
    for (size_t i = 0; i < m.size(); ++i)
      if (m[i] == t.rank) idx = int(i);
    if (idx < 0)
      return std::string(group_kind_name(GroupKind(g))) + " group does not contain rank " +
             std::to_string(t.rank);
    my_index_[g] = idx;
    // Members share their smallest global rank as the colour; the key orders them by index.
    rc = MPI_Comm_split(world, m.front(), idx, &comms_[g]);
    if (rc != MPI_SUCCESS) return "MPI_Comm_split failed: " + mpi_error_string(rc);
    MPI_Comm_set_errhandler(comms_[g], MPI_ERRORS_RETURN);
    int n = 0;
    MPI_Comm_size(comms_[g], &n);
    if (n != int(m.size()))
      return std::string(group_kind_name(GroupKind(g))) + " group has " + std::to_string(n) +
             " ranks in MPI but " + std::to_string(m.size()) + " in the topology";
  }
  MPI_Comm_free(&world);
  rc = MPI_Comm_dup(MPI_COMM_WORLD, &ping_comm_);
  if (rc != MPI_SUCCESS) return "MPI_Comm_dup failed: " + mpi_error_string(rc);
  engine_->start_responder(ping_comm_);
  return {};
}

std::string MpiCommunicator::diagnose(double wait_s) {
  const int n = topo_.world();
  std::vector<int> sink(static_cast<size_t>(n), 0);
  std::vector<std::shared_ptr<MpiOp>> pongs(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    if (r == topo_.rank) continue;
    for (const bool is_ping : {true, false}) {
      auto op = std::make_shared<MpiOp>();
      op->info.kind = is_ping ? CommOpKind::Send : CommOpKind::Recv;
      op->info.dtype = DType::I32;
      op->info.count = 1;
      op->comm = ping_comm_;
      op->send = &ping_val_;
      op->recv = &sink[size_t(r)];
      op->tag = is_ping ? kPingTag : kPongTag;
      op->peer_rank = r;
      if (!is_ping) pongs[size_t(r)] = op;
      engine_->submit(op);
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::string silent;
  for (;;) {
    engine_->progress();
    silent.clear();
    for (int r = 0; r < n; ++r)
      if (pongs[size_t(r)] && pongs[size_t(r)]->state.load(std::memory_order_acquire) != MpiOp::Done) {
        const Coord c = topo_.coord_of(r);
        silent += std::string(silent.empty() ? "" : ", ") + "rank " + std::to_string(r) + " (tp " +
                  std::to_string(c.tp) + ", pp " + std::to_string(c.pp) + ", dp " + std::to_string(c.dp) + ")";
      }
    if (silent.empty()) return {};
    if (seconds_since(t0) > wait_s) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", wait_s);
  return silent + " did not answer a liveness ping within " + buf + " s: hung or dead";
}

}  // namespace

CommCreateResult comm_create_mpi(const MpiSession& session, const Topology& topo, bool v_placement,
                                 const MpiOptions& opts) {
  if (topo.world() != session.world_size())
    return {nullptr, "tp*pp*dp = " + std::to_string(topo.TP) + "*" + std::to_string(topo.PP) + "*" +
                         std::to_string(topo.DP) + " = " + std::to_string(topo.world()) +
                         ", but mpirun started " + std::to_string(session.world_size()) + " ranks"};
  MpiOptions o = opts;
  if (o.progress == CommProgress::Thread && !session.thread_multiple()) o.progress = CommProgress::Inline;
  auto c = std::make_unique<MpiCommunicator>(topo, o);
  std::string err = c->build(v_placement);
  if (!err.empty()) return {nullptr, err};
  return {std::move(c), ""};
}

}  // namespace stp

#endif  // STP_HAVE_MPI
