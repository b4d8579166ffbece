package wasmcheck

// The contract of cell ABI v1 (docs/cell-abi.md) as data.

// ABIVersion is the cell ABI this package checks against.
const ABIVersion = 1

// MaxMemoryPages is the most a 32-bit linear memory can have: 65536 pages
// of 64 KiB, 4 GiB.
const MaxMemoryPages = 65536

// Value types as they appear in signatures.
const (
	i32 byte = 0x7f
	i64 byte = 0x7e
)

type signature struct {
	params, results []byte
}

// exportRule says what one export of the ABI must be.
type exportRule struct {
	name     string
	kind     byte
	sig      signature // functions only
	optional bool
}

var exportRules = []exportRule{
	{name: "memory", kind: kindMemory},
	{name: "_initialize", kind: kindFunc, optional: true},
	{name: "cloudskin_abi_version", kind: kindFunc, sig: signature{results: []byte{i32}}},
	{name: "cloudskin_alloc", kind: kindFunc, sig: signature{params: []byte{i32}, results: []byte{i32}}},
	{name: "cloudskin_free", kind: kindFunc, sig: signature{params: []byte{i32, i32}}},
	{name: "cloudskin_init", kind: kindFunc, sig: signature{params: []byte{i32, i32}, results: []byte{i32}}, optional: true},
	{name: "cloudskin_handle", kind: kindFunc, sig: signature{params: []byte{i32, i32}, results: []byte{i32}}},
}

// HostModule is the import module of the host functions.
const HostModule = "cloudskin"

// WASIModule is the WASI preview1 import module.
const WASIModule = "wasi_snapshot_preview1"

var hostImports = map[string]signature{
	"emit": {params: []byte{i32, i32, i32, i32}, results: []byte{i32}},
	"send": {params: []byte{i32, i32, i32, i32}, results: []byte{i32}},
	"log":  {params: []byte{i32, i32, i32}},
	"now":  {results: []byte{i64}},
}

// wasiFunctions are the functions of WASI preview1; the agent links all of
// them (with no preopens, sockets, environment or arguments), so a name
// outside this list could never be satisfied at load.
var wasiFunctions = map[string]bool{
	"args_get": true, "args_sizes_get": true, "environ_get": true, "environ_sizes_get": true,
	"clock_res_get": true, "clock_time_get": true,
	"fd_advise": true, "fd_allocate": true, "fd_close": true, "fd_datasync": true,
	"fd_fdstat_get": true, "fd_fdstat_set_flags": true, "fd_fdstat_set_rights": true,
	"fd_filestat_get": true, "fd_filestat_set_size": true, "fd_filestat_set_times": true,
	"fd_pread": true, "fd_prestat_get": true, "fd_prestat_dir_name": true, "fd_pwrite": true,
	"fd_read": true, "fd_readdir": true, "fd_renumber": true, "fd_seek": true, "fd_sync": true,
	"fd_tell": true, "fd_write": true,
	"path_create_directory": true, "path_filestat_get": true, "path_filestat_set_times": true,
	"path_link": true, "path_open": true, "path_readlink": true, "path_remove_directory": true,
	"path_rename": true, "path_symlink": true, "path_unlink_file": true,
	"poll_oneoff": true, "proc_exit": true, "proc_raise": true, "sched_yield": true, "random_get": true,
	"sock_accept": true, "sock_recv": true, "sock_send": true, "sock_shutdown": true,
}
