;; Minimal is a cell written by hand in WebAssembly text: proof that the cell ABI v1
;; (docs/cell-abi.md) is not Go-only. It imports only cloudskin.emit (no WASI, so no
;; _initialize), has no cloudskin_init (it is optional), allocates with a bump
;; allocator, and for each batch emits to output "count" the number of records in the
;; batch as ASCII decimal, read from the batch header. A batch without the "CSB1" magic
;; or too short for its header returns -200; a refused emit returns the host's code.
(module
  (import "cloudskin" "emit" (func $emit (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  ;; 16..21: the output stream name; 32..48: scratch for the decimal count.
  (data (i32.const 16) "count")

  ;; Allocations start at 1 KiB and bump upward; $next is the first free byte.
  (global $next (mut i32) (i32.const 1024))

  (func (export "cloudskin_abi_version") (result i32)
    (i32.const 1))

  ;; cloudskin_alloc: 8-byte aligned, growing memory as needed; 0 when it cannot.
  (func (export "cloudskin_alloc") (param $size i32) (result i32)
    (local $p i32) (local $end i64) (local $pages i64)
    (if (i32.lt_s (local.get $size) (i32.const 0))
      (then (return (i32.const 0))))
    (local.set $p (global.get $next))
    (local.set $end
      (i64.add (i64.extend_i32_u (local.get $p))
               (i64.and (i64.add (i64.extend_i32_u (local.get $size)) (i64.const 7))
                        (i64.const -8))))
    (if (i64.gt_u (local.get $end) (i64.const 0x100000000))
      (then (return (i32.const 0))))
    (local.set $pages (i64.shr_u (i64.add (local.get $end) (i64.const 65535)) (i64.const 16)))
    (if (i64.gt_u (local.get $pages) (i64.extend_i32_u (memory.size)))
      (then
        (if (i32.eq (memory.grow (i32.wrap_i64 (i64.sub (local.get $pages) (i64.extend_i32_u (memory.size)))))
                    (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $next (i32.wrap_i64 (local.get $end)))
    (local.get $p))

  ;; cloudskin_free: the host frees each buffer right after the call that used it, so
  ;; freeing the most recent allocation rolls $next back; anything else is leaked.
  (func (export "cloudskin_free") (param $ptr i32) (param $size i32)
    (if (i32.eq (i32.add (local.get $ptr)
                         (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8)))
                (global.get $next))
      (then (global.set $next (local.get $ptr)))))

  ;; cloudskin_handle: batch = "CSB1", input_len u16, input, count u32, records…
  (func (export "cloudskin_handle") (param $ptr i32) (param $len i32) (result i32)
    (local $ilen i32) (local $n i32) (local $pos i32) (local $rc i32)
    (if (i32.lt_u (local.get $len) (i32.const 10))
      (then (return (i32.const -200))))
    (if (i32.ne (i32.load (local.get $ptr)) (i32.const 0x31425343)) ;; "CSB1" little-endian
      (then (return (i32.const -200))))
    (local.set $ilen (i32.load16_u offset=4 (local.get $ptr)))
    (if (i32.gt_u (i32.add (i32.const 10) (local.get $ilen)) (local.get $len))
      (then (return (i32.const -200))))
    (local.set $n (i32.load offset=6 (i32.add (local.get $ptr) (local.get $ilen))))
    ;; Write the digits backwards, ending at byte 48.
    (local.set $pos (i32.const 48))
    (loop $digit
      (local.set $pos (i32.sub (local.get $pos) (i32.const 1)))
      (i32.store8 (local.get $pos)
                  (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digit (local.get $n)))
    (local.set $rc
      (call $emit (i32.const 16) (i32.const 5)
                  (local.get $pos) (i32.sub (i32.const 48) (local.get $pos))))
    (if (i32.lt_s (local.get $rc) (i32.const 0))
      (then (return (local.get $rc))))
    (i32.const 0))
)
