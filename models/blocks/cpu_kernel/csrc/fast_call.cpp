// birnn_fast_call: a block's serving call (eval mode, a cached plan, no gradient) as one C++ function called from
// Python, instead of Python code around a ctypes call. A Python extension module, built against this torch's
// headers by build.py (load_fast_call) and used by inference.py (fast_forward); the kernel library itself stays
// free of Python and libtorch's C++ API.
//
// Why: a TREC-length request's C call is ~0.25 ms when its weights come from DRAM, and the Python around it (a dozen
// checks through torch's bindings, three torch.empty, the ctypes call) cost another ~0.1 ms once the caches are
// cold, as they are for a server's request after other work. Here each check is a read of a C++ field.
//
// bind(...) returns a builtin function bound to one plan (a capsule): call(module, input, lengths) returns
// (output, h_n, c_n) exactly as inference.fast_forward documents, or None where the general path must run.
// Every condition is the one inference.fast_forward states; the kernel entry point, the Args template and the
// offsets of its per-call fields come from Python (abi.Args), so the layout is defined once. The kernel runs without
// the GIL, as a ctypes call does: what it reads is held by this call's locals or by the plan.
#include <Python.h>

#include <ATen/EmptyTensor.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using Entry = void (*)(const void* args);

// Byte offsets of the fields a call sets in the Args template (abi.Args); the rest stays as prepared.
struct Offsets {
  Py_ssize_t steps, batch, threads, x, lengths, out, h_n, h0, c0, c_n;
};

struct Plan {
  at::ScalarType dtype;
  Entry entry;
  std::vector<char> args;           // the prepared Args: cell, sizes, weights, merges
  Offsets at;
  std::vector<PyObject*> names;     // the module's flat weight names (owned)
  std::vector<PyObject*> weights;   // the prepared weight objects (owned): identity is part of the check
  std::vector<int64_t> versions;
  std::vector<const void*> addresses;
  PyObject* merge_modes;            // a copy of the module's merge modes when prepared (owned)
  PyObject* keep;                   // what the Args' addresses point into (owned)
  PyObject* chosen;                 // {(B, T, has_lengths, threads): bool}, the policy's answers (owned)
  PyObject* ask;                    // ask(chosen, key) -> bool: asks the policy, remembers the answer (owned)
  PyObject* policy;                 // what holds the policy's version, `policy_version` (calibrate) (owned)
  PyObject* switches;               // this thread's switches, `off` and `forced` (cpu_kernel._switch) (owned)
  long long chosen_under;           // the policy version the answers were given under
  int64_t input_size, hidden, states;
  std::vector<int64_t> out_tail;    // (2, H) after a last merge None, else (merged size,)
  bool cell_state;
  double flop_per_row_step, split_min_flop;
  at::Tensor zeros;                 // (states, B, H): the zero initial state of the last batch size
};

constexpr const char* kCapsule = "birnn_fast_call.Plan";

void destroy(PyObject* capsule) {
  auto* plan = static_cast<Plan*>(PyCapsule_GetPointer(capsule, kCapsule));
  for (PyObject* o : plan->names) Py_DECREF(o);
  for (PyObject* o : plan->weights) Py_DECREF(o);
  Py_XDECREF(plan->merge_modes);
  Py_XDECREF(plan->keep);
  Py_XDECREF(plan->chosen);
  Py_XDECREF(plan->ask);
  Py_XDECREF(plan->policy);
  Py_XDECREF(plan->switches);
  delete plan;
}

bool is_tensor(PyObject* o) { return Py_TYPE(o) == reinterpret_cast<PyTypeObject*>(THPVariableClass); }

// Whatever would make the general path differ from a direct kernel call: autocast, tracing, a torch function or
// dispatch mode, a torch.func transform. (Dynamo tracing is checked in Python, before the call; torch.export traces
// with Dynamo or under fake-tensor dispatch modes.)
bool plain_eager() {
  const c10::impl::LocalDispatchKeySet keys = c10::impl::tls_local_dispatch_key_set();
  // Autocast for a device is on while its key is not excluded (torch.is_autocast_enabled(device)).
  if (!keys.excluded_.isSupersetOf(c10::autocast_dispatch_keyset)) return false;
  // functorch includes its front key while its interpreter stack is not empty (peek_interpreter_stack()).
  if (keys.included_.has(c10::DispatchKey::FuncTorchDynamicLayerFrontMode)) return false;
  if (torch::jit::tracer::isTracing()) return false;
  return !at::impl::torch_function_mode_enabled() && c10::impl::TorchDispatchModeTLS::stack_len() == 0;
}

// The module attributes a call reads, interned once (module init): looked up in the instance's __dict__, where
// nn.Module keeps them; a module that keeps one elsewhere (a property) takes the general path.
PyObject* kTraining;
PyObject* kParameters;
PyObject* kMergeModes;
PyObject* kBatchFirst;
PyObject* kOff;
PyObject* kForced;
PyObject* kPolicyVersion;

// The truth of `object.name`: 1, 0, -1 error set.
int attribute_true(PyObject* object, PyObject* name) {
  PyObject* value = PyObject_GetAttr(object, name);
  if (value == nullptr) return -1;
  const int truth = PyObject_IsTrue(value);
  Py_DECREF(value);
  return truth;
}

// The truth of `attributes[name]`: 1 true, 0 false, -1 error set or missing (`missing` set).
int truth_of(PyObject* attributes, PyObject* name, bool& missing) {
  PyObject* value = PyDict_GetItemWithError(attributes, name);  // borrowed
  if (value == nullptr) {
    missing = !PyErr_Occurred();
    return -1;
  }
  return PyObject_IsTrue(value);
}

// The module still holds the very weights prepared, unchanged, none needing a gradient where grad mode is on, and
// the merge modes prepared. 1 yes, 0 no, -1 error set.
int weights_unchanged(const Plan& plan, PyObject* attributes, bool grad) {
  PyObject* params = PyDict_GetItemWithError(attributes, kParameters);  // borrowed
  if (params == nullptr) return PyErr_Occurred() ? -1 : 0;
  int same = PyDict_Check(params) ? 1 : 0;
  for (size_t i = 0; same == 1 && i < plan.names.size(); ++i) {
    PyObject* w = PyDict_GetItemWithError(params, plan.names[i]);
    if (w == nullptr) {
      same = PyErr_Occurred() ? -1 : 0;
      break;
    }
    if (w != plan.weights[i]) {
      same = 0;
      break;
    }
    const at::Tensor& t = THPVariable_Unpack(w);
    if (t.is_inference() || t._version() != plan.versions[i] || t.const_data_ptr() != plan.addresses[i] ||
        (grad && t.requires_grad()))
      same = 0;
  }
  if (same != 1) return same;
  PyObject* merges = PyDict_GetItemWithError(attributes, kMergeModes);  // borrowed
  if (merges == nullptr) return PyErr_Occurred() ? -1 : 0;
  return PyObject_RichCompareBool(merges, plan.merge_modes, Py_EQ);
}

// The policy's remembered answer for (B, T, lengths, threads), asking Python (ask) the first time; every answer is
// asked again after the policy's version changes. 1, 0, -1 error.
int kernel_chosen(Plan& plan, int64_t batch, int64_t steps, bool has_lengths, int threads) {
  PyObject* current = PyObject_GetAttr(plan.policy, kPolicyVersion);
  if (current == nullptr) return -1;
  const long long version = PyLong_AsLongLong(current);
  Py_DECREF(current);
  if (version == -1 && PyErr_Occurred()) return -1;
  if (version != plan.chosen_under) {  // a new calibration or pinned record: every answer is asked again
    PyDict_Clear(plan.chosen);
    plan.chosen_under = version;
  }
  PyObject* chosen = plan.chosen;
  PyObject* key = PyTuple_New(4);
  if (key == nullptr) return -1;
  PyTuple_SET_ITEM(key, 0, PyLong_FromLongLong(batch));
  PyTuple_SET_ITEM(key, 1, PyLong_FromLongLong(steps));
  PyTuple_SET_ITEM(key, 2, Py_NewRef(has_lengths ? Py_True : Py_False));
  PyTuple_SET_ITEM(key, 3, PyLong_FromLong(threads));
  if (PyTuple_GET_ITEM(key, 0) == nullptr || PyTuple_GET_ITEM(key, 1) == nullptr ||
      PyTuple_GET_ITEM(key, 3) == nullptr) {
    Py_DECREF(key);
    return -1;
  }
  PyObject* answer = PyDict_GetItemWithError(chosen, key);  // borrowed
  int truth;
  if (answer != nullptr) {
    truth = PyObject_IsTrue(answer);
  } else if (PyErr_Occurred()) {
    truth = -1;
  } else {
    PyObject* asked = PyObject_CallFunctionObjArgs(plan.ask, chosen, key, nullptr);
    truth = asked == nullptr ? -1 : PyObject_IsTrue(asked);
    Py_XDECREF(asked);
  }
  Py_DECREF(key);
  return truth;
}

constexpr size_t kArgsMax = 512;  // bytes of an Args at most (bind checks): a call's copy lives on the stack

template <typename V>
void put(char* args, Py_ssize_t offset, V value) {
  std::memcpy(args + offset, &value, sizeof(V));
}

// The call of one plan on a module whose instance attributes are `attributes`.
PyObject* forward(Plan& plan, PyObject* attributes, PyObject* input_object, PyObject* lengths_object) {
  try {
    bool missing = false;
    const int training = truth_of(attributes, kTraining, missing);
    if (training != 0) return training < 0 && !missing ? nullptr : Py_NewRef(Py_None);
    if (!is_tensor(input_object)) Py_RETURN_NONE;
    const at::Tensor& input = THPVariable_Unpack(input_object);
    if (input.scalar_type() != plan.dtype || input.dim() != 3 || !input.device().is_cpu() ||
        input.layout() != at::kStrided || !plain_eager())
      Py_RETURN_NONE;
    const bool grad = c10::GradMode::is_enabled();
    if (grad && input.requires_grad()) Py_RETURN_NONE;
    const int same = weights_unchanged(plan, attributes, grad);
    if (same != 1) return same < 0 ? nullptr : Py_NewRef(Py_None);
    const int batch_first_truth = truth_of(attributes, kBatchFirst, missing);
    if (batch_first_truth < 0) return missing ? Py_NewRef(Py_None) : nullptr;
    const bool batch_first = batch_first_truth == 1;
    const int64_t batch = input.size(batch_first ? 0 : 1), steps = input.size(batch_first ? 1 : 0);
    if (input.size(2) != plan.input_size || steps == 0 || batch == 0) Py_RETURN_NONE;

    int64_t run_steps = steps;
    at::Tensor lengths;  // contiguous, kept alive through the call, when rows differ in length
    const bool has_lengths = lengths_object != Py_None;
    if (has_lengths) {
      if (!is_tensor(lengths_object)) Py_RETURN_NONE;
      const at::Tensor& given = THPVariable_Unpack(lengths_object);
      if (given.scalar_type() != at::kLong || !given.device().is_cpu() || given.layout() != at::kStrided ||
          given.dim() != 1 || given.size(0) != batch)
        Py_RETURN_NONE;
      const at::Tensor values = given.is_contiguous() ? given : given.contiguous();
      const int64_t* v = values.const_data_ptr<int64_t>();
      const auto [shortest, longest] = std::minmax_element(v, v + batch);
      if (*shortest < 1 || *longest > steps) Py_RETURN_NONE;  // the general path raises
      // As run_layers: steps after the longest row are not run (zeros), and rows all as long as the run take the
      // call without lengths.
      run_steps = *longest;
      if (*shortest < *longest) lengths = values;
    }
    int threads = std::max(1, at::get_num_threads());
    const int forced = attribute_true(plan.switches, kForced);  // cpu_kernel.forced(): the policy is not asked
    if (forced < 0) return nullptr;
    if (forced == 0 && plan.dtype == at::kFloat) {
      const int wins = kernel_chosen(plan, batch, steps, has_lengths, threads);
      if (wins != 1) return wins < 0 ? nullptr : Py_NewRef(Py_None);
    }

    const auto empty = [&plan](at::IntArrayRef sizes) {
      return at::detail::empty_cpu(sizes, plan.dtype, std::nullopt, std::nullopt, std::nullopt, std::nullopt);
    };
    c10::SmallVector<int64_t, 4> out_sizes{batch_first && batch == 1 ? batch : steps,
                                           batch_first && batch == 1 ? steps : batch};  // no heap allocation
    out_sizes.append(plan.out_tail.begin(), plan.out_tail.end());
    at::Tensor x, out = empty(out_sizes), result;
    if (batch_first && batch > 1) {
      x = input.transpose(0, 1).slice(0, 0, run_steps).contiguous();
      result = out.transpose(0, 1);
    } else {  // (T, B, F) or (1, T, F): time-major memory
      x = input.is_contiguous() ? input : input.contiguous();
      result = out;
    }
    if (run_steps < steps) {  // the padded steps' outputs are zero; (1, T, out) and (T, 1, out) share one layout
      const int64_t row = out.numel() / steps;
      std::memset(static_cast<char*>(out.mutable_data_ptr()) + run_steps * row * out.element_size(), 0,
                  (steps - run_steps) * row * out.element_size());
    }
    if (double(run_steps) * double(batch) * plan.flop_per_row_step < plan.split_min_flop)  // policy.inference_threads
      threads = 1;
    at::Tensor h_n = empty({plan.states, batch, plan.hidden});
    at::Tensor c_n = plan.cell_state ? empty({plan.states, batch, plan.hidden}) : h_n;
    if (plan.zeros.size(1) != batch)
      plan.zeros = at::zeros({plan.states, batch, plan.hidden}, at::TensorOptions().dtype(plan.dtype));
    const at::Tensor zeros = plan.zeros;  // kept alive through the call: another thread may widen the plan's

    alignas(16) char args[kArgsMax];
    std::memcpy(args, plan.args.data(), plan.args.size());
    put<int32_t>(args, plan.at.steps, static_cast<int32_t>(run_steps));
    put<int32_t>(args, plan.at.batch, static_cast<int32_t>(batch));
    put<int32_t>(args, plan.at.threads, threads);
    put<const void*>(args, plan.at.x, x.const_data_ptr());
    put<const void*>(args, plan.at.lengths, lengths.defined() ? lengths.const_data_ptr() : nullptr);
    put<void*>(args, plan.at.out, out.mutable_data_ptr());
    put<void*>(args, plan.at.h_n, h_n.mutable_data_ptr());
    put<const void*>(args, plan.at.h0, zeros.const_data_ptr());
    if (plan.cell_state) {
      put<const void*>(args, plan.at.c0, zeros.const_data_ptr());
      put<void*>(args, plan.at.c_n, c_n.mutable_data_ptr());
    }
    Py_BEGIN_ALLOW_THREADS
    plan.entry(args);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(NNN)", THPVariable_Wrap(std::move(result)), THPVariable_Wrap(h_n),
                         THPVariable_Wrap(c_n));
  } catch (const std::exception& error) {
    PyErr_SetString(PyExc_RuntimeError, error.what());
    return nullptr;
  }
}

// call(module, input, lengths)
PyObject* call(PyObject* self, PyObject* const* argv, Py_ssize_t argc) {
  if (argc != 3) {
    PyErr_Format(PyExc_TypeError, "birnn_fast_call: expected 3 arguments (module, input, lengths), got %zd", argc);
    return nullptr;
  }
  Plan& plan = *static_cast<Plan*>(PyCapsule_GetPointer(self, kCapsule));
  const int off = attribute_true(plan.switches, kOff);  // cpu_kernel.disabled(): PyTorch's kernels
  if (off != 0) return off < 0 ? nullptr : Py_NewRef(Py_None);
  PyObject* attributes = PyObject_GenericGetDict(argv[0], nullptr);
  if (attributes == nullptr) return nullptr;
  PyObject* answer = forward(plan, attributes, argv[1], argv[2]);
  Py_DECREF(attributes);
  return answer;
}

PyMethodDef call_method = {"call", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(call)),
                           METH_FASTCALL, "call(module, input, lengths): (output, h_n, c_n) or None"};

Py_ssize_t offset_of(PyObject* offsets, const char* name, bool& ok) {
  PyObject* value = PyDict_GetItemString(offsets, name);  // borrowed
  if (value == nullptr) {
    ok = false;
    PyErr_Format(PyExc_KeyError, "birnn_fast_call.bind: offsets has no field %s", name);
    return 0;
  }
  return PyLong_AsSsize_t(value);
}

// bind(dtype_is_double, entry_address, args_bytes, offsets, names, weights, merge_modes, keep, chosen, ask, policy,
//      switches, input_size, hidden, states, out_tail, cell_state, flop_per_row_step, split_min_flop) -> call
PyObject* bind(PyObject*, PyObject* a) {
  int is_double, cell_state;
  unsigned long long entry;
  PyObject *args_bytes, *offsets, *names, *weights, *merge_modes, *keep, *chosen, *ask, *policy, *switches, *out_tail;
  long long input_size, hidden, states;
  double flop_per_row_step, split_min_flop;
  if (!PyArg_ParseTuple(a, "pKSO!O!O!OOO!OOOLLLO!pdd", &is_double, &entry, &args_bytes, &PyDict_Type, &offsets,
                        &PyTuple_Type, &names, &PyTuple_Type, &weights, &merge_modes, &keep, &PyDict_Type, &chosen,
                        &ask, &policy, &switches, &input_size, &hidden, &states, &PyTuple_Type, &out_tail,
                        &cell_state, &flop_per_row_step, &split_min_flop))
    return nullptr;
  if (PyTuple_GET_SIZE(names) != PyTuple_GET_SIZE(weights)) {
    PyErr_SetString(PyExc_ValueError, "birnn_fast_call.bind: names and weights differ in length");
    return nullptr;
  }
  auto plan = std::make_unique<Plan>();
  bool ok = true;
  plan->at = {offset_of(offsets, "steps", ok), offset_of(offsets, "batch", ok), offset_of(offsets, "threads", ok),
              offset_of(offsets, "x", ok),     offset_of(offsets, "lengths", ok), offset_of(offsets, "out", ok),
              offset_of(offsets, "h_n", ok),   offset_of(offsets, "h0", ok),    offset_of(offsets, "c0", ok),
              offset_of(offsets, "c_n", ok)};
  if (!ok || PyErr_Occurred()) return nullptr;
  plan->dtype = is_double ? at::kDouble : at::kFloat;
  plan->entry = reinterpret_cast<Entry>(static_cast<uintptr_t>(entry));
  if (static_cast<size_t>(PyBytes_GET_SIZE(args_bytes)) > kArgsMax) {
    PyErr_Format(PyExc_ValueError, "birnn_fast_call.bind: an Args of %zd bytes, more than %zu",
                 PyBytes_GET_SIZE(args_bytes), kArgsMax);
    return nullptr;
  }
  const char* bytes = PyBytes_AS_STRING(args_bytes);
  plan->args.assign(bytes, bytes + PyBytes_GET_SIZE(args_bytes));
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(weights); ++i) {
    PyObject* w = PyTuple_GET_ITEM(weights, i);
    if (!THPVariable_Check(w)) {
      PyErr_SetString(PyExc_TypeError, "birnn_fast_call.bind: weights must be tensors");
      return nullptr;
    }
    const at::Tensor& t = THPVariable_Unpack(w);
    plan->versions.push_back(t._version());
    plan->addresses.push_back(t.const_data_ptr());
  }
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(out_tail); ++i) plan->out_tail.push_back(PyLong_AsLongLong(
      PyTuple_GET_ITEM(out_tail, i)));
  if (PyErr_Occurred()) return nullptr;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); ++i) {
    plan->names.push_back(Py_NewRef(PyTuple_GET_ITEM(names, i)));
    plan->weights.push_back(Py_NewRef(PyTuple_GET_ITEM(weights, i)));
  }
  plan->merge_modes = Py_NewRef(merge_modes);
  plan->keep = Py_NewRef(keep);
  plan->chosen = Py_NewRef(chosen);
  plan->ask = Py_NewRef(ask);
  plan->policy = Py_NewRef(policy);
  plan->switches = Py_NewRef(switches);
  plan->chosen_under = -1;  // the first call reads the policy's version and asks
  plan->input_size = input_size;
  plan->hidden = hidden;
  plan->states = states;
  plan->cell_state = cell_state;
  plan->flop_per_row_step = flop_per_row_step;
  plan->split_min_flop = split_min_flop;
  plan->zeros = at::zeros({states, 1, hidden}, at::TensorOptions().dtype(plan->dtype));
  PyObject* capsule = PyCapsule_New(plan.get(), kCapsule, destroy);
  if (capsule == nullptr) return nullptr;
  plan.release();
  PyObject* function = PyCFunction_New(&call_method, capsule);
  Py_DECREF(capsule);
  return function;
}

PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "bind(...): the serving call of one prepared plan (models/blocks/cpu_kernel/"
                                 "inference.py, _FastCall)"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "birnn_fast_call", "A block's serving call in C++.", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit_birnn_fast_call() {
  kTraining = PyUnicode_InternFromString("training");
  kParameters = PyUnicode_InternFromString("_parameters");
  kMergeModes = PyUnicode_InternFromString("merge_modes");
  kBatchFirst = PyUnicode_InternFromString("batch_first");
  kOff = PyUnicode_InternFromString("off");
  kForced = PyUnicode_InternFromString("forced");
  kPolicyVersion = PyUnicode_InternFromString("policy_version");
  if (kTraining == nullptr || kParameters == nullptr || kMergeModes == nullptr || kBatchFirst == nullptr ||
      kOff == nullptr || kForced == nullptr || kPolicyVersion == nullptr)
    return nullptr;
  return PyModule_Create(&module_def);
}
