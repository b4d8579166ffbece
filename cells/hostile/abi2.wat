;; Hostile test cell: well formed, but cloudskin_abi_version returns 2, a version the
;; v1 host does not know and must refuse.
(module
  (memory (export "memory") 1)
  (func (export "cloudskin_abi_version") (result i32)
    (i32.const 2))

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
