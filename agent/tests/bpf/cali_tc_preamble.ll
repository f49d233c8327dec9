; A TC classifier in the ELF section Felix attaches from (`cali_tc_preamble`), so that `tc`
; names the filter as Felix's are named ("<obj>:[cali_tc_preamble]"). It returns
; TC_ACT_UNSPEC (-1) and touches nothing. Built (LLVM 14) with:
;   llc -march=bpf -filetype=obj -o cali_tc_preamble.o cali_tc_preamble.ll
define i32 @preamble(i8* %ctx) section "cali_tc_preamble" {
  ret i32 -1
}
@_license = global [4 x i8] c"GPL\00", section "license"
