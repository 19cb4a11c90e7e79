package config

import (
	"fmt"
	"reflect"
)

// Diff lists where b differs from a, one path per differing value
// (Resources[r0].Resync.MaxRate, Nodes[beta].Address, Alerts): every
// exported field counts, not only those in Hash, so that a reload can
// tell what it would change. Items of Nodes, Resources and Alerts are
// named by their name (or path) when both lists have the same length.
func Diff(a, b *Config) []string {
	var out []string
	diffValue("", reflect.ValueOf(*a), reflect.ValueOf(*b), &out)
	return out
}

func diffValue(path string, a, b reflect.Value, out *[]string) {
	switch a.Kind() {
	case reflect.Struct:
		for i := range a.NumField() {
			f := a.Type().Field(i)
			if !f.IsExported() || path == "" && f.Name == "Path" {
				continue // where the file and its keys were, not settings
			}
			diffValue(join(path, f.Name), a.Field(i), b.Field(i), out)
		}
	case reflect.Slice:
		if a.Len() != b.Len() {
			*out = append(*out, path)
			return
		}
		for i := range a.Len() {
			diffValue(fmt.Sprintf("%s[%s]", path, itemName(a.Index(i), i)), a.Index(i), b.Index(i), out)
		}
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				*out = append(*out, path)
			}
			return
		}
		diffValue(path, a.Elem(), b.Elem(), out)
	case reflect.Map:
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, path)
		}
	default:
		if a.Interface() != b.Interface() {
			*out = append(*out, path)
		}
	}
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// itemName names a list item by its Name (or Node, or Path) field.
func itemName(v reflect.Value, i int) string {
	if v.Kind() == reflect.Struct {
		for _, f := range []string{"Name", "Node", "Path"} {
			if fv := v.FieldByName(f); fv.IsValid() && fv.Kind() == reflect.String && fv.String() != "" {
				return fv.String()
			}
		}
	}
	return fmt.Sprint(i)
}
