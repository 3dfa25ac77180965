/*
 * labguest: the lab's tiny multiboot (v1) guest kernel, for live-migration tests.
 *
 * What it does, in 32-bit protected mode as left by the multiboot loader (QEMU -kernel):
 *   1. prints   "LABGUEST BOOT mem=<KiB above 1 MiB> fill=<MiB>"      (once per boot)
 *   2. fills [FILL_BASE, top) with a pattern derived from each address, where
 *      top = min(FILL_BASE + 48 MiB, end of RAM - 1 MiB), and prints "LABGUEST FILLED"
 *   3. loops forever; each pass
 *        - dirties DIRTY_PAGES pages (first dword of each page := pass number), round robin,
 *        - verifies the rest of one page (dwords 1..1023 must still hold the pattern),
 *          printing "LABGUEST CORRUPT <addr>" on a mismatch (memory lost in a migration),
 *        - waits PASS_TSC TSC ticks,
 *      and every HB_PASSES passes prints "LABGUEST HB <n>" with n = 1, 2, 3, ...
 *
 * All output goes to COM1 (0x3f8). A test reads the serial log: exactly one BOOT line means the
 * guest never rebooted; HB numbers that keep increasing (consecutively) across hosts mean the same
 * running guest continued after each migration.
 */
.set MB_MAGIC,     0x1BADB002
.set MB_FLAGS,     0x00000002          /* bit 1: please pass memory information */
.set MB_BOOTED,    0x2BADB002          /* eax value from a multiboot loader */
.set FILL_BASE,    0x00200000          /* 2 MiB: above the kernel image */
.set FILL_SPAN,    0x03000000          /* 48 MiB */
.set PATTERN,      0x6C61624D          /* 'labM' */
.set DIRTY_PAGES,  256                 /* 1 MiB dirtied per pass */
.set PASS_TSC,     20000000            /* ~10 ms at 2 GHz */
.set HB_PASSES,    25                  /* a heartbeat every ~0.25 s */
.set COM1,         0x3f8

.section .multiboot, "a"
.align 4
mb_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

.section .text
.code32
.global _start
_start:
    cli
    cld
    mov     $stack_top, %esp

    /* RAM size from the multiboot info (flags bit 0: mem_lower/mem_upper valid). */
    xor     %edx, %edx                  /* mem_upper KiB, 0 = unknown */
    cmp     $MB_BOOTED, %eax
    jne     1f
    testl   $1, (%ebx)
    jz      1f
    mov     8(%ebx), %edx
1:  mov     %edx, mem_upper_kib

    /* top = FILL_BASE + FILL_SPAN, lowered to (1 MiB + mem_upper - 1 MiB) when RAM is smaller. */
    mov     $FILL_BASE + FILL_SPAN, %eax
    test    %edx, %edx
    jz      2f
    shl     $10, %edx                   /* bytes above 1 MiB == end of RAM - 1 MiB */
    and     $0xFFFFF000, %edx
    cmp     %eax, %edx
    jae     2f
    mov     %edx, %eax
2:  cmp     $FILL_BASE + 0x10000, %eax  /* keep at least 16 pages */
    jae     3f
    mov     $FILL_BASE + 0x10000, %eax
3:  mov     %eax, fill_top

    /* "LABGUEST BOOT mem=<kib> fill=<mib>" */
    mov     $s_boot, %esi
    call    puts
    mov     mem_upper_kib, %eax
    call    putdec
    mov     $s_fill, %esi
    call    puts
    mov     fill_top, %eax
    sub     $FILL_BASE, %eax
    shr     $20, %eax
    call    putdec
    mov     $s_crlf, %esi
    call    puts

    /* Fill: dword at address a := a ^ PATTERN. */
    mov     $FILL_BASE, %edi
    mov     fill_top, %ecx
fill_loop:
    mov     %edi, %eax
    xor     $PATTERN, %eax
    stosl
    cmp     %ecx, %edi
    jb      fill_loop
    mov     $s_filled, %esi
    call    puts

    /* Main loop. ebx = pass, ebp = dirty cursor, vcursor/hb in memory. */
    xor     %ebx, %ebx
    mov     $FILL_BASE, %ebp
    movl    $FILL_BASE, vcursor
main_loop:
    /* dirty DIRTY_PAGES pages */
    mov     $DIRTY_PAGES, %ecx
    mov     fill_top, %edx
dirty:
    mov     %ebx, (%ebp)
    add     $4096, %ebp
    cmp     %edx, %ebp
    jb      4f
    mov     $FILL_BASE, %ebp
4:  loop    dirty

    /* verify dwords 1..1023 of the page at vcursor */
    mov     vcursor, %esi
    lea     4(%esi), %edi
    lea     4096(%esi), %ecx
verify:
    mov     %edi, %eax
    xor     $PATTERN, %eax
    cmp     (%edi), %eax
    je      5f
    push    %edi
    mov     $s_corrupt, %esi
    call    puts
    pop     %eax
    push    %eax
    call    puthex
    mov     $s_crlf, %esi
    call    puts
    pop     %edi
    mov     vcursor, %esi
    lea     4096(%esi), %ecx
    and     $0xFFFFF000, %edi            /* report a page once: skip to its end */
    lea     4092(%edi), %edi
5:  add     $4, %edi
    cmp     %ecx, %edi
    jb      verify
    mov     vcursor, %esi
    add     $4096, %esi
    cmp     fill_top, %esi
    jb      6f
    mov     $FILL_BASE, %esi
6:  mov     %esi, vcursor

    /* heartbeat */
    inc     %ebx
    mov     %ebx, %eax
    xor     %edx, %edx
    mov     $HB_PASSES, %ecx
    div     %ecx
    test    %edx, %edx
    jnz     7f
    incl    hb
    mov     $s_hb, %esi
    call    puts
    mov     hb, %eax
    call    putdec
    mov     $s_crlf, %esi
    call    puts

    /* pace: wait PASS_TSC ticks (unsigned difference: a TSC step backwards ends the wait) */
7:  rdtsc
    mov     %eax, %edi
8:  pause
    rdtsc
    sub     %edi, %eax
    cmp     $PASS_TSC, %eax
    jb      8b
    jmp     main_loop

/* putc: al = character; waits for the transmit holding register to be empty. */
putc:
    push    %edx
    push    %eax
    mov     $COM1 + 5, %dx
9:  in      %dx, %al
    test    $0x20, %al
    jz      9b
    pop     %eax
    mov     $COM1, %dx
    out     %al, %dx
    pop     %edx
    ret

/* puts: esi = NUL-terminated string (clobbers esi). */
puts:
    push    %eax
10: lodsb
    test    %al, %al
    jz      11f
    call    putc
    jmp     10b
11: pop     %eax
    ret

/* putdec: eax = unsigned value, printed in decimal. */
putdec:
    push    %eax
    push    %ecx
    push    %edx
    push    %edi
    mov     $numbuf_end, %edi
    movb    $0, (%edi)
    mov     $10, %ecx
12: xor     %edx, %edx
    div     %ecx
    add     $'0', %dl
    dec     %edi
    mov     %dl, (%edi)
    test    %eax, %eax
    jnz     12b
    push    %esi
    mov     %edi, %esi
    call    puts
    pop     %esi
    pop     %edi
    pop     %edx
    pop     %ecx
    pop     %eax
    ret

/* puthex: eax = value, printed as 0x + 8 hex digits. */
puthex:
    push    %eax
    push    %ecx
    push    %edx
    mov     %eax, %edx
    mov     $'0', %al
    call    putc
    mov     $'x', %al
    call    putc
    mov     $8, %ecx
13: rol     $4, %edx
    mov     %edx, %eax
    and     $0xf, %eax
    mov     hexdigits(%eax), %al
    call    putc
    loop    13b
    pop     %edx
    pop     %ecx
    pop     %eax
    ret

.section .rodata
s_boot:     .asciz "LABGUEST BOOT mem="
s_fill:     .asciz " fill="
s_filled:   .asciz "LABGUEST FILLED\r\n"
s_hb:       .asciz "LABGUEST HB "
s_corrupt:  .asciz "LABGUEST CORRUPT "
s_crlf:     .asciz "\r\n"
hexdigits:  .ascii "0123456789abcdef"

.section .bss
.align 16
mem_upper_kib: .skip 4
fill_top:      .skip 4
vcursor:       .skip 4
hb:            .skip 4
numbuf:        .skip 15
numbuf_end:    .skip 1
.align 16
stack:         .skip 16384
stack_top:
