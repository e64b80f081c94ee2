;; The matrix-vector product of chargen's browser export (chargen.js), in WebAssembly with 128-bit SIMD.
;;
;;   matvec(x, n, w, m, out):  out[j] += x[0] w[0, j] + x[1] w[1, j] + ... + x[n-1] w[n-1, j],  j < m
;;
;; All five are byte addresses and counts in this module's memory: x (n,) float32, w (n, m) float32 row-major,
;; out (m,) float32; m a multiple of 4 (chargen.js pads the columns). The sum runs over k in order, each
;; product and addition rounded to float32 (no fused multiply-add), so chargen.js's plain-JavaScript
;; fallback computes the same bits. Four rows of w are read per pass over out: five loads and one store per
;; 16 multiply-adds. scripts/build_wasm.py assembles this file into the base64 string in chargen.js.
(module
  (memory (export "memory") 1)
  (func (export "matvec") (param $x i32) (param $n i32) (param $w i32) (param $m i32) (param $out i32)
    (local $k i32) (local $j i32) (local $stride i32) (local $o i32)
    (local $x0 v128) (local $x1 v128) (local $x2 v128) (local $x3 v128)
    (local $r0 i32) (local $r1 i32) (local $r2 i32) (local $r3 i32)
    (local.set $stride (i32.shl (local.get $m) (i32.const 2)))  ;; bytes per row of w
    ;; rows k .. k+3 at a time
    (block $done4
      (loop $rows4
        (br_if $done4 (i32.gt_u (i32.add (local.get $k) (i32.const 4)) (local.get $n)))
        (local.set $o (i32.add (local.get $x) (i32.shl (local.get $k) (i32.const 2))))
        (local.set $x0 (f32x4.splat (f32.load (local.get $o))))
        (local.set $x1 (f32x4.splat (f32.load offset=4 (local.get $o))))
        (local.set $x2 (f32x4.splat (f32.load offset=8 (local.get $o))))
        (local.set $x3 (f32x4.splat (f32.load offset=12 (local.get $o))))
        (local.set $r0 (i32.add (local.get $w) (i32.mul (local.get $k) (local.get $stride))))
        (local.set $r1 (i32.add (local.get $r0) (local.get $stride)))
        (local.set $r2 (i32.add (local.get $r1) (local.get $stride)))
        (local.set $r3 (i32.add (local.get $r2) (local.get $stride)))
        (local.set $j (i32.const 0))
        (block $cols4_done
          (loop $cols4
            (br_if $cols4_done (i32.ge_u (local.get $j) (local.get $stride)))
            (local.set $o (i32.add (local.get $out) (local.get $j)))
            (v128.store (local.get $o)
              (f32x4.add
                (f32x4.add
                  (f32x4.add
                    (f32x4.add
                      (v128.load (local.get $o))
                      (f32x4.mul (local.get $x0) (v128.load (i32.add (local.get $r0) (local.get $j)))))
                    (f32x4.mul (local.get $x1) (v128.load (i32.add (local.get $r1) (local.get $j)))))
                  (f32x4.mul (local.get $x2) (v128.load (i32.add (local.get $r2) (local.get $j)))))
                (f32x4.mul (local.get $x3) (v128.load (i32.add (local.get $r3) (local.get $j))))))
            (local.set $j (i32.add (local.get $j) (i32.const 16)))
            (br $cols4)))
        (local.set $k (i32.add (local.get $k) (i32.const 4)))
        (br $rows4)))
    ;; the last n % 4 rows, one at a time
    (block $done1
      (loop $rows1
        (br_if $done1 (i32.ge_u (local.get $k) (local.get $n)))
        (local.set $x0 (f32x4.splat (f32.load (i32.add (local.get $x) (i32.shl (local.get $k) (i32.const 2))))))
        (local.set $r0 (i32.add (local.get $w) (i32.mul (local.get $k) (local.get $stride))))
        (local.set $j (i32.const 0))
        (block $cols1_done
          (loop $cols1
            (br_if $cols1_done (i32.ge_u (local.get $j) (local.get $stride)))
            (local.set $o (i32.add (local.get $out) (local.get $j)))
            (v128.store (local.get $o)
              (f32x4.add
                (v128.load (local.get $o))
                (f32x4.mul (local.get $x0) (v128.load (i32.add (local.get $r0) (local.get $j))))))
            (local.set $j (i32.add (local.get $j) (i32.const 16)))
            (br $cols1)))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br $rows1)))))
