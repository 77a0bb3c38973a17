// Command gosymdump prints every function of a Go ELF binary as Go's own
// debug/gosym reads pclntab: one line per function, in table order,
//
//	NAME <tab> ENTRY <tab> END
//
// with ENTRY and END in decimal (END is the next function's entry, so
// END - ENTRY is the size pclntab gives the function). It is the reference
// gotrace's function table is compared with in tests/test_gosym_matrix.py.
package main

import (
	"bufio"
	"debug/elf"
	"debug/gosym"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gosymdump BINARY")
		os.Exit(2)
	}
	if err := dump(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "gosymdump:", err)
		os.Exit(1)
	}
}

func dump(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	pclntab, err := pclntabData(f)
	if err != nil {
		return err
	}
	table, err := gosym.NewTable(nil, gosym.NewLineTable(pclntab, textStart(f)))
	if err != nil {
		return err
	}
	if len(table.Funcs) == 0 {
		return fmt.Errorf("%s: debug/gosym found no functions", path)
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for _, fn := range table.Funcs {
		fmt.Fprintf(out, "%s\t%d\t%d\n", fn.Name, fn.Entry, fn.End)
	}
	return nil
}

// pclntabData is the pclntab: its own section, the PIE section, or the
// bytes between the runtime.pclntab and runtime.epclntab symbols.
func pclntabData(f *elf.File) ([]byte, error) {
	for _, name := range []string{".gopclntab", ".data.rel.ro.gopclntab"} {
		if s := f.Section(name); s != nil {
			return s.Data()
		}
	}
	start, okStart := symbol(f, "runtime.pclntab")
	end, okEnd := symbol(f, "runtime.epclntab")
	if !okStart || !okEnd {
		return nil, fmt.Errorf("no pclntab section and no runtime.pclntab symbols")
	}
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_LOAD && prog.Vaddr <= start && end <= prog.Vaddr+prog.Filesz {
			data := make([]byte, end-start)
			_, err := prog.ReadAt(data, int64(start-prog.Vaddr))
			return data, err
		}
	}
	return nil, fmt.Errorf("runtime.pclntab is outside the loaded segments")
}

// textStart is where pclntab's entry offsets count from: the runtime.text
// symbol (which external linking puts past the start of .text), else the
// start of .text (stripped binaries, internally linked).
func textStart(f *elf.File) uint64 {
	if addr, ok := symbol(f, "runtime.text"); ok {
		return addr
	}
	if s := f.Section(".text"); s != nil {
		return s.Addr
	}
	return 0
}

func symbol(f *elf.File, name string) (uint64, bool) {
	syms, err := f.Symbols()
	if err != nil {
		return 0, false
	}
	for _, s := range syms {
		if s.Name == name {
			return s.Value, true
		}
	}
	return 0, false
}
