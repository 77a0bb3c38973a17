package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"reflect"
	"runtime"
	"time"
	"unsafe"
)

var (
	errorType    = reflect.TypeOf((*error)(nil)).Elem()
	contextType  = reflect.TypeOf((*context.Context)(nil)).Elem()
	durationType = reflect.TypeOf(time.Duration(0))
	timeType     = reflect.TypeOf(time.Time{})
)

// T logs the value of the variable p points to (see the format in main.go).
func T(p interface{}) V {
	return truth(reflect.ValueOf(p).Elem(), nil)
}

func hex(p uintptr) interface{} {
	if p == 0 {
		return nil
	}
	return fmt.Sprintf("%#x", p)
}

// truth describes v from its own memory; path holds the addresses of the
// pointees on the way to it (a pointer to one of them is a cycle).
func truth(v reflect.Value, path []uintptr) V {
	t := v.Type()
	if t == durationType {
		d := time.Duration(v.Int())
		return V{"t": "duration", "v": v.Int(), "s": d.String()}
	}
	if t == timeType && v.CanAddr() {
		tm := *(*time.Time)(unsafe.Pointer(v.UnsafeAddr()))
		return V{"t": "time", "s": tm.String()}
	}
	switch t.Kind() {
	case reflect.Bool:
		return V{"t": "bool", "v": v.Bool()}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return V{"t": "int", "v": v.Int()}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return V{"t": "uint", "v": v.Uint()}
	case reflect.Float32, reflect.Float64:
		return V{"t": "float", "v": v.Float()}
	case reflect.String:
		s := v.String()
		return V{"t": "string", "b64": base64.StdEncoding.EncodeToString([]byte(s)), "len": len(s)}
	case reflect.Slice:
		if v.IsNil() {
			if t.Elem().Kind() == reflect.Uint8 {
				return V{"t": "bytes", "b64": nil}
			}
			return V{"t": "slice", "v": nil}
		}
		if t.Elem().Kind() == reflect.Uint8 {
			b := v.Bytes()
			return V{"t": "bytes", "b64": base64.StdEncoding.EncodeToString(b), "len": v.Len(), "cap": v.Cap()}
		}
		elems := []interface{}{}
		for i := 0; i < v.Len(); i++ {
			elems = append(elems, truth(v.Index(i), path))
		}
		return V{"t": "slice", "v": elems, "len": v.Len(), "cap": v.Cap()}
	case reflect.Array:
		elems := []interface{}{}
		for i := 0; i < v.Len(); i++ {
			elems = append(elems, truth(v.Index(i), path))
		}
		return V{"t": "array", "v": elems}
	case reflect.Struct:
		fields := V{}
		for i := 0; i < v.NumField(); i++ {
			fields[t.Field(i).Name] = truth(v.Field(i), path)
		}
		return V{"t": "struct", "v": fields}
	case reflect.Ptr:
		if v.IsNil() {
			return V{"t": "ptr", "v": nil}
		}
		addr := v.Pointer()
		out := V{"t": "ptr", "v": hex(addr)}
		for _, seen := range path {
			if seen == addr {
				out["cycle"] = true
				return out
			}
		}
		if len(path) < 8 {
			out["to"] = truth(v.Elem(), append(append([]uintptr{}, path...), addr))
		}
		return out
	case reflect.UnsafePointer:
		return V{"t": "ptr", "v": hex(v.Pointer())}
	case reflect.Map:
		if v.IsNil() {
			return V{"t": "map", "v": nil}
		}
		entries := []interface{}{}
		it := v.MapRange()
		for it.Next() {
			entries = append(entries, V{"k": truth(it.Key(), path), "v": truth(it.Value(), path)})
		}
		return V{"t": "map", "v": entries, "len": v.Len()}
	case reflect.Chan:
		if v.IsNil() {
			return V{"t": "chan", "v": nil}
		}
		return V{"t": "chan", "v": hex(v.Pointer()), "len": v.Len(), "cap": v.Cap()}
	case reflect.Func:
		if v.IsNil() {
			return V{"t": "func", "v": nil}
		}
		closure := *(*uintptr)(unsafe.Pointer(v.UnsafeAddr()))
		return V{"t": "func", "v": hex(closure), "name": runtime.FuncForPC(v.Pointer()).Name()}
	case reflect.Interface:
		kind := "iface"
		if t == errorType {
			kind = "error"
		}
		if t == contextType { // shown by its concrete type only
			if v.IsNil() {
				return V{"t": "context", "v": nil}
			}
			return V{"t": "context", "v": V{"type": v.Elem().Type().String()}}
		}
		if v.IsNil() {
			return V{"t": kind, "v": nil}
		}
		e := v.Elem()
		out := V{"type": e.Type().String(), "value": truth(readable(v, e), path)}
		if kind == "error" {
			iv := v
			if v.CanAddr() {
				iv = reflect.NewAt(t, unsafe.Pointer(v.UnsafeAddr())).Elem()
			}
			out["msg"] = iv.Interface().(error).Error()
		}
		return V{"t": kind, "v": out}
	}
	return V{"t": "unknown", "kind": t.Kind().String()}
}

// readable gives the concrete value e of the interface v as an addressable
// value over the interface's own memory (its data word, or what it points
// to), so that it can be read like every other value truth() looks at, also
// inside unexported fields.
func readable(v, e reflect.Value) reflect.Value {
	if !v.CanAddr() {
		c := reflect.New(e.Type()).Elem()
		c.Set(e)
		return c
	}
	words := (*[2]unsafe.Pointer)(unsafe.Pointer(v.UnsafeAddr()))
	switch e.Kind() {
	case reflect.Ptr, reflect.UnsafePointer, reflect.Map, reflect.Chan, reflect.Func:
		return reflect.NewAt(e.Type(), unsafe.Pointer(&words[1])).Elem()
	}
	return reflect.NewAt(e.Type(), words[1]).Elem()
}
