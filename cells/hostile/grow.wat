;; Hostile test cell: cloudskin_handle grows memory one page at a time until
;; memory.grow fails, then returns -300. With the host's memory limit in place the
;; handler returns -300 with memory at most the limit; without one it reaches 4 GiB.
(module
  (memory (export "memory") 1)
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
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    (i32.const -300))
)
