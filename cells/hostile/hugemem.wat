;; Hostile test cell: declares a minimum of 60000 pages (about 3.7 GiB) of memory. The
;; host must refuse it at load, before instantiating, as its minimum exceeds the limit.
(module
  (memory (export "memory") 60000)
  (func (export "cloudskin_abi_version") (result i32)
    (i32.const 1))

  ;; One buffer at a time is all the host needs (alloc, call, free), so alloc hands
  ;; out the same region above 1 KiB whenever it fits in the first page.
  (func (export "cloudskin_alloc") (param $size i32) (result i32)
    (if (result i32) (i32.le_u (local.get $size) (i32.const 64512))
      (then (i32.const 1024))
      (else (i32.const 0))))

  (func (export "cloudskin_free") (param $ptr i32) (param $size i32))

  (func (export "cloudskin_handle") (param $ptr i32) (param $len i32) (result i32)
    (i32.const 0))
)
