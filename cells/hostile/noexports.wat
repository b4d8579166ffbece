;; Hostile test cell: a valid module with none of the ABI's functions. The host must
;; refuse it at load with a message naming what is missing.
(module
  (memory (export "memory") 1)
  (func (export "hello") (result i32)
    (i32.const 1)))
