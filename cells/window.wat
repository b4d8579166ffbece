;; Window keeps every record it is given, as a window of raw readings would: it
;; appends each record's time and payload to a log in linear memory, growing memory as
;; needed, and for each batch emits to output "size" 12 bytes: the log's end (u32) and
;; the number of records kept (u64), little-endian. Input batches land in a fixed 1 MiB
;; buffer below the log, so the cell's state is exactly what it was fed. Its state grows
;; without bound: it is what migration benchmarks move (1, 16, 64 MiB).
(module
  (import "cloudskin" "emit" (func $emit (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 18)
  (global $end (mut i32) (i32.const 1179648)) ;; the log starts at page 18
  (global $records (mut i64) (i64.const 0))
  (data (i32.const 16) "size")
  (func (export "cloudskin_abi_version") (result i32) (i32.const 1))
  (func (export "cloudskin_alloc") (param $n i32) (result i32)
    (if (result i32) (i32.gt_u (local.get $n) (i32.const 1048576))
      (then (i32.const 0)) (else (i32.const 65536))))
  (func (export "cloudskin_free") (param i32 i32))
  (func (export "cloudskin_handle") (param $p i32) (param $len i32) (result i32)
    (local $q i32) (local $n i32) (local $plen i32) (local $need i32) (local $t i64) (local $have i32)
    (local.set $q (i32.add (i32.add (local.get $p) (i32.const 6)) (i32.load16_u offset=4 (local.get $p))))
    (local.set $n (i32.load (local.get $q)))
    (local.set $q (i32.add (local.get $q) (i32.const 4)))
    (block $done (loop $next
      (br_if $done (i32.eqz (local.get $n)))
      ;; record: offset u64, time i64, topic_len u16, topic, payload_len u32, payload
      (local.set $t (i64.load offset=8 (local.get $q)))
      (local.set $q (i32.add (i32.add (local.get $q) (i32.const 18)) (i32.load16_u offset=16 (local.get $q))))
      (local.set $plen (i32.load (local.get $q)))
      (local.set $q (i32.add (local.get $q) (i32.const 4)))
      (local.set $need (i32.add (global.get $end) (i32.add (local.get $plen) (i32.const 8))))
      (local.set $have (i32.mul (memory.size) (i32.const 65536)))
      (if (i32.gt_u (local.get $need) (local.get $have))
        (then (if (i32.eq (memory.grow (i32.shr_u (i32.add (i32.sub (local.get $need) (local.get $have)) (i32.const 65535)) (i32.const 16)))
                          (i32.const -1))
          (then (return (i32.const -200))))))
      (i64.store (global.get $end) (local.get $t))
      (memory.copy (i32.add (global.get $end) (i32.const 8)) (local.get $q) (local.get $plen))
      (global.set $end (local.get $need))
      (global.set $records (i64.add (global.get $records) (i64.const 1)))
      (local.set $q (i32.add (local.get $q) (local.get $plen)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br $next)))
    (i32.store (i32.const 32) (global.get $end))
    (i64.store (i32.const 36) (global.get $records))
    (call $emit (i32.const 16) (i32.const 4) (i32.const 32) (i32.const 12)))
)
